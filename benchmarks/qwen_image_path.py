"""Qwen2-VL image preprocessing, images/s on one core: transformers' processor (the PIL one,
as used without torchvision) vs recaption.preprocess.FastQwenVLPreprocessor, on the same 512 px
JPEGs (decode included), in one run, alternating, at the default pixel limits and at
max_pixels = 448 x 448.

    python benchmarks/qwen_image_path.py [--images 64 --repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch

from image_path import jpegs  # the same 512 px JPEGs (benchmarks/)
from recaption.preprocess import FastQwenVLPreprocessor
from recaption.samples.images import decode_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    data = jpegs(512, args.images)
    print(f"qwen_image_path  {date.today()}  {platform.processor() or platform.machine()}  {args.images} "
          "JPEGs of 512 px, one thread")
    for options in ({}, {"max_pixels": 448 * 448}):
        processor = Qwen2VLImageProcessorPil(**options)
        fast = FastQwenVLPreprocessor(processor)
        ways = {"processor": lambda im, p=processor: p(images=[im], return_tensors="pt"),
                "fast": lambda im, f=fast: f([im])}
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, way in ways.items():
                started = time.perf_counter()
                for d in data:
                    way(decode_image(d))
                rates[name].append(args.images / (time.perf_counter() - started))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"{options or 'default pixels'}: processor {med['processor']:.1f} images/s, "
              f"fast {med['fast']:.1f} images/s, ratio {med['fast'] / med['processor']:.2f}x")


if __name__ == "__main__":
    main()
