"""The download's fast path for a plain JPEG (RGB or grey, upright) shrunk keep_ratio by less than
about 2x (no DCT-domain reduction fits) and stored as JPEG, or stored as sent once libjpeg read it.

simplejpeg decodes into a BGR array (at libjpeg's M/8 where that maps onto whole pixels: a rounded
scale stretched the picture, 4-8 dB), OpenCV resizes (bicubic under a 1.3x shrink, else INTER_AREA)
and encodes: every step releases the GIL, where Pillow's held it between the download's threads.
Anything libjpeg warns about, or any doubt, goes Pillow's way (`process.py`). docs/benchmarks.md.
"""

from __future__ import annotations

import io
import warnings

import cv2
import simplejpeg
from PIL import Image

from ..samples.images import ORIENTATION, jpeg_or_format

Size = tuple[int, int]
CUBIC_BELOW = 1.3  # shrink factors under this: bicubic interpolation, else area averaging
# A reduced JPEG decode stops this far above the target: libjpeg's scaled IDCT is no resampling
# filter, and where it alone made the target (1400x1050 at 1/4 for 341x256) the stored image was
# 2 dB further from full-size Lanczos than from 1/2 and Lanczos (39.5 against 41.4 dB).
REDUCED_DECODE_MARGIN = 1.1


def plain_jpeg_size(data: bytes) -> Size | None:
    """The size of a JPEG this path takes (RGB or grey, EXIF-upright); None for any other file,
    or one whose header Pillow cannot read (Pillow's path then says why)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        with warnings.catch_warnings():  # (over Pillow's bomb limit: Pillow's path names it)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))  # the header only: nothing is decoded
        with header:
            plain = jpeg_or_format(header.format) == "JPEG" and header.mode in ("RGB", "L")
            if not plain or header.getexif().get(ORIENTATION, 1) != 1:
                return None
            return header.size
    except Exception:  # noqa: BLE001 - not ours to judge: Pillow's path names the failure
        return None


def decodes_cleanly(data: bytes, size: Size) -> bool:
    """Whether libjpeg reads the whole file without a warning: every entropy-coded block is
    decoded, at 1/8 scale (a third of a full decode's time at 1600 px), for a JPEG stored as
    sent. False: Pillow's path judges it (it decodes some files libjpeg warns about)."""
    try:
        simplejpeg.decode_jpeg(data, strict=True, min_width=-(-size[0] // 8), min_height=-(-size[1] // 8))
    except ValueError:
        return False
    return True


def scaled_decode_size(size: Size, target: Size) -> Size:
    """The size libjpeg decodes a `size` JPEG at for `target`: the smallest M/8 of it in whole
    pixels (M * width and M * height divisible by 8) at least REDUCED_DECODE_MARGIN above the
    target, when bicubic can finish the shrink from there; else the full size."""
    width, height = size
    for eighths in range(1, 8):
        shrink = min(width * eighths / 8 / target[0], height * eighths / 8 / target[1])
        if shrink < REDUCED_DECODE_MARGIN or (width * eighths) % 8 or (height * eighths) % 8:
            continue
        if shrink < CUBIC_BELOW:
            return width * eighths // 8, height * eighths // 8
        break
    return size


def resize_plain_jpeg(data: bytes, size: Size, target: Size, quality: int) -> bytes | None:
    """The `size` JPEG resized to `target` and encoded at `quality`; None when libjpeg warns
    about the file (the caller decodes it with Pillow instead)."""
    reduced = scaled_decode_size(size, target)
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True, min_width=reduced[0],
                                        min_height=reduced[1])
    except ValueError:  # corrupt or truncated data: Pillow's rules apply
        return None
    height, width = pixels.shape[:2]
    if (width, height) != reduced:  # (not the size its header gave: Pillow's path judges it)
        return None
    if (width, height) != target:
        shrink = min(width / target[0], height / target[1])
        method = cv2.INTER_CUBIC if shrink < CUBIC_BELOW else cv2.INTER_AREA
        pixels = cv2.resize(pixels, target, interpolation=method)
    try:
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    except cv2.error:
        return None
    return encoded.tobytes() if ok else None
