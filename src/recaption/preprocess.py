"""Fast image preprocessing for CLIP-style processors (CLIP, LLaVA-1.5 pad-to-square) and Qwen2-VL
dynamic resolution: uint8 PIL resizing and one fused float32 normalise pass instead of several
float64 numpy passes. Used only where the processor's settings are ones it reproduces (tests
compare it with the processor)."""

from __future__ import annotations

import numpy as np
from PIL import Image

_SUPPORTED = {"CLIPImageProcessor", "CLIPImageProcessorPil", "LlavaImageProcessor", "LlavaImageProcessorPil"}


def _size_dict(value) -> dict:
    return dict(value) if value is not None else {}


def rescale_normalise(ip) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each 3 x 1 x 1, with (x * rescale - mean) / std == x * a + b: one fused float32
    pass for the image processor's rescale and normalise."""
    mean = np.asarray(ip.image_mean, dtype=np.float32)
    std = np.asarray(ip.image_std, dtype=np.float32)
    scale = np.float32(ip.rescale_factor if ip.do_rescale else 1.0)
    if not ip.do_normalize:
        mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    return (scale / std).reshape(3, 1, 1), (-mean / std).reshape(3, 1, 1)


class FastClipPreprocessor:
    def __init__(self, image_processor):
        ip = image_processor
        self.do_pad = bool(getattr(ip, "do_pad", False))
        self.do_resize = bool(ip.do_resize)
        self.size = _size_dict(ip.size)
        self.resample = Image.Resampling(int(ip.resample))
        self.do_center_crop = bool(ip.do_center_crop)
        self.crop = _size_dict(ip.crop_size)
        self.a, self.b = rescale_normalise(ip)
        self.pad_colour = tuple(int(x * 255) for x in ip.image_mean)

    @staticmethod
    def supports(image_processor) -> bool:
        ip = image_processor
        size = _size_dict(getattr(ip, "size", None))
        return (
            type(ip).__name__ in _SUPPORTED
            and getattr(ip, "do_convert_rgb", True) in (True, None)
            and (set(size) == {"shortest_edge"} or set(size) == {"height", "width"})
        )

    def _resize_shape(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resize, computed as transformers computes it."""
        if "shortest_edge" in self.size:
            from transformers.image_transforms import get_resize_output_image_size

            dummy = np.empty((3, height, width), dtype=np.uint8)  # shape only
            out_h, out_w = get_resize_output_image_size(
                dummy, self.size["shortest_edge"], default_to_square=False,
                input_data_format="channels_first",
            )
            return out_w, out_h
        return self.size["width"], self.size["height"]

    def _uint8_chw(self, img: Image.Image) -> np.ndarray:
        """Pad, resize and crop in uint8; returns a (3, H, W) view."""
        if self.do_pad and img.width != img.height:
            side = max(img.size)
            square = Image.new("RGB", (side, side), self.pad_colour)
            square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
            img = square
        if self.do_resize:
            shape = self._resize_shape(img.width, img.height)
            if shape != img.size:
                img = img.resize(shape, resample=self.resample)
        arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
        if self.do_center_crop:
            ch, cw = self.crop["height"], self.crop["width"]
            top, left = (arr.shape[1] - ch) // 2, (arr.shape[2] - cw) // 2
            if top < 0 or left < 0:  # smaller than the crop: the processor pads; rare, so let it
                raise ValueError("image smaller than crop size")
            arr = arr[:, top : top + ch, left : left + cw]
        return arr

    def _normalise_into(self, arr: np.ndarray, out: np.ndarray) -> None:
        # uint8 * float32 straight into the float32 output, then one in-place add: ~10x less
        # time than astype + two temporaries.
        np.multiply(arr, self.a, out=out, casting="unsafe")
        out += self.b

    def image(self, img: Image.Image) -> np.ndarray:
        arr = self._uint8_chw(img)
        out = np.empty(arr.shape, dtype=np.float32)
        self._normalise_into(arr, out)
        return out

    def __call__(self, images: list[Image.Image]):
        """A (N, 3, H, W) float32 tensor, written in place without a stacking copy."""
        import torch

        arrays = [self._uint8_chw(im) for im in images]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError("images of different output sizes")  # the processor decides then
        batch = np.empty((len(arrays), *arrays[0].shape), dtype=np.float32)
        for arr, out in zip(arrays, batch, strict=True):
            self._normalise_into(arr, out)
        return torch.from_numpy(batch)


_QWEN_SUPPORTED = {"Qwen2VLImageProcessor", "Qwen2VLImageProcessorPil", "Qwen2VLImageProcessorFast"}


class FastQwenVLPreprocessor:
    """The same fast path for Qwen2-VL / Qwen2.5-VL dynamic resolution: each image resized (uint8
    PIL, bicubic) to its own grid of patch_size x merge_size cells within min/max pixels, as
    `smart_resize` decides, normalised in one float32 pass, then cut into the processor's
    flat patch layout. Output: `pixel_values` (all images' patches, concatenated) and
    `image_grid_thw`, equal to the processor's (tests check)."""

    def __init__(self, image_processor):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        ip = image_processor
        self.smart_resize = smart_resize
        size = ip.size
        self.min_pixels = getattr(size, "shortest_edge", None) or size["shortest_edge"]
        self.max_pixels = getattr(size, "longest_edge", None) or size["longest_edge"]
        self.patch, self.merge = int(ip.patch_size), int(ip.merge_size)
        self.temporal = int(ip.temporal_patch_size)
        self.resample = Image.Resampling(int(ip.resample))
        self.a, self.b = rescale_normalise(ip)

    @staticmethod
    def supports(image_processor) -> bool:
        ip = image_processor
        return (
            type(ip).__name__ in _QWEN_SUPPORTED
            and getattr(ip, "do_convert_rgb", True) in (True, None)
            and bool(getattr(ip, "do_resize", False))
            and all(hasattr(ip, k) for k in ("patch_size", "merge_size", "temporal_patch_size"))
        )

    def image(self, img: Image.Image) -> tuple[np.ndarray, list[int]]:
        img = img if img.mode == "RGB" else img.convert("RGB")
        factor = self.patch * self.merge
        height, width = self.smart_resize(img.height, img.width, factor=factor, min_pixels=self.min_pixels,
                                          max_pixels=self.max_pixels)
        if (width, height) != img.size:
            img = img.resize((width, height), self.resample)
        arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
        arr = arr * self.a + self.b
        p, m = self.patch, self.merge
        grid_h, grid_w = height // p, width // p
        patches = arr.reshape(3, grid_h // m, m, p, grid_w // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
        patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], self.temporal, p, p))
        return patches.reshape(grid_h * grid_w, 3 * self.temporal * p * p), [1, grid_h, grid_w]

    def __call__(self, images: list[Image.Image]) -> dict:
        import torch

        done = [self.image(img) for img in images]
        pixel_values = torch.from_numpy(np.concatenate([d[0] for d in done], axis=0))
        return {"pixel_values": pixel_values, "image_grid_thw": torch.tensor([d[1] for d in done])}


class FastImageProcessor:
    """Stands in for a processor's image processor: `__call__` runs the fast path, every other
    attribute (merge_size, patch_size, ...) is the original's, so the processor's own text
    handling (image tokens per grid, padding) runs unchanged around it."""

    def __init__(self, original, fast):
        self.original = original
        self.fast = fast

    def __getattr__(self, name):
        if name in ("original", "fast"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.original, name)

    def __call__(self, images=None, **kwargs):
        from transformers import BatchFeature

        flat = [im for group in images for im in group] if images and isinstance(images[0], list) else images
        return BatchFeature(self.fast(flat), tensor_type=kwargs.get("return_tensors"))
