"""CPU image path: decode + resize + normalise to model-ready 336 px tensors, images/s per core.

Three ways, on the same JPEG bytes, in one run, one thread:
  ours         recaption.samples.images.decode_image (JPEG draft: libjpeg decodes big photos at 1/2, 1/4
               or 1/8 scale; shrink to <= 1024 px) + recaption.preprocess.FastClipPreprocessor
               (pad to square, resize, crop, normalise in one uint8 -> float32 pass)
  plain PIL    Image.open + convert("RGB") at full size, resize shortest side to 336 (bicubic),
               centre crop, numpy normalise: what one writes without thinking about it
  transformers the same decoded full-size image through LlavaImageProcessor (what a
               processor(...) call does)
at three source sizes: web thumbnails (~500 px), 2048 px and 4000 px photos.
pillow-simd would speed up Pillow's resize, but it cannot be installed beside Pillow.

    python benchmarks/image_path.py [--images 64]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time
from datetime import date

import numpy as np
import torch
from PIL import Image

from recaption.preprocess import FastClipPreprocessor
from recaption.samples.images import decode_image
from recaption.samples.shards import bundled_samples

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def jpegs(long_side: int, count: int) -> list[bytes]:
    photos = [Image.open(io.BytesIO(r.image)).convert("RGB") for r in bundled_samples()]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        scale = long_side / max(photo.size)
        size = (round(photo.width * scale), round(photo.height * scale))
        img = photo.resize(size, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def plain_pillow(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = 336 / min(img.size)
    img = img.resize((max(336, round(img.width * scale)), max(336, round(img.height * scale))),
                     Image.Resampling.BICUBIC)
    left, top = (img.width - 336) // 2, (img.height - 336) // 2
    img = img.crop((left, top, left + 336, top + 336))
    return ((np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from transformers import AutoProcessor

    from recaption.models.tiny import tiny_model_path

    image_processor = AutoProcessor.from_pretrained(tiny_model_path()).image_processor  # LLaVA 336 px
    fast = FastClipPreprocessor(image_processor)
    ways = {
        "ours": lambda data: fast([decode_image(data)]),
        "plain PIL": plain_pillow,
        "transformers": lambda data: image_processor(
            Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="pt")["pixel_values"],
    }
    print(f"image_path  {date.today()}  {platform.processor() or platform.machine()}  1 thread  "
          f"{args.images} images per set, median of {args.repeats} runs (alternating order)")
    for long_side in (500, 2048, 4000):
        data = jpegs(long_side, args.images)
        times: dict[str, list[float]] = {name: [] for name in ways}
        for repeat in range(args.repeats):
            order = list(ways) if repeat % 2 == 0 else list(reversed(ways))
            for name in order:
                start = time.perf_counter()
                for item in data:
                    ways[name](item)
                times[name].append(time.perf_counter() - start)
        rate = {name: args.images / statistics.median(t) for name, t in times.items()}
        print(f"{long_side:5d} px: " + "  ".join(f"{name} {r:7.1f}/s" for name, r in rate.items())
              + f"  | ours / plain PIL {rate['ours'] / rate['plain PIL']:.2f}x"
              + f"  ours / transformers {rate['ours'] / rate['transformers']:.2f}x")


if __name__ == "__main__":
    main()
