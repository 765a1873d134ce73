"""Decode image bytes into RGB PIL images, every failure a status instead of a crash."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from .sample import DECODE_ERROR, EMPTY_IMAGE, MISSING_IMAGE, TOO_LARGE, Sample

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own bomb limit: 0.25 GiB of 24-bit pixels
DEFAULT_MAX_SIDE = 1024  # models see 336-448 px; decoding bigger only costs time


class ImageDecodeError(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decodable mode to RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


UNIDENTIFIED = "cannot identify image file (not an image, or a format Pillow cannot read)"
MAX_PIXELS_HINT = "raise it with --max-pixels"


def too_many_pixels(pixels: int, max_pixels: int, size: tuple[int, int] | None = None,
                    hint: str = MAX_PIXELS_HINT) -> ImageDecodeError:
    shape = f"{size[0]}x{size[1]} = " if size else ""
    return ImageDecodeError(
        TOO_LARGE, f"{shape}{pixels} pixels, over the limit of {max_pixels} pixels ({hint})"
    )


def _allow_pixels(max_pixels: int) -> None:
    """Pillow refuses images over its own bomb limit whatever we ask for: a --max-pixels over the
    default raises Pillow's limit to it (never lowers it: our own check enforces a smaller one)."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > max(current, DEFAULT_MAX_PIXELS):
        Image.MAX_IMAGE_PIXELS = max_pixels


def _stable(message: str) -> str:
    """Pillow's message without object addresses (`<_io.BytesIO object at 0x7f...>`), which
    differ between runs."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", message)


def with_end_marker(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A JPEG with all its data but no end marker (FF D9), as some servers send it, with the
    marker added; any other bytes as they are. libjpeg's strict decode at 1/8 scale checks that
    every block is there (a file cut inside its data stays truncated). An end marker after the
    last scan's start needs no decode: entropy-coded data never holds FF D9."""
    if not data.startswith(b"\xff\xd8") or data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda"):
        return data
    try:
        height, width = simplejpeg.decode_jpeg_header(data)[:2]
        if width * height > max_pixels:  # (refused by the pixel limit anyway)
            return data
        eighth = {"min_width": -(-width // 8), "min_height": -(-height // 8)}
        simplejpeg.decode_jpeg(data + b"\xff\xd9", strict=True, **eighth)
        return data + b"\xff\xd9"
    except ValueError:  # cut short, damaged, or a JPEG libjpeg-turbo cannot decode (CMYK)
        return data


def jpeg_or_format(pillow_format: str | None) -> str | None:
    """Pillow's format name, an MPO (a JPEG followed by more pictures: stereo pairs, Ultra HDR
    gain maps) named JPEG: it is its first picture's JPEG to every reader."""
    return "JPEG" if pillow_format == "MPO" else pillow_format


@dataclass(frozen=True)
class ImageHeader:
    """Format, mode and size as stored (not as a reduced decode made them), EXIF orientation."""

    format: str | None
    mode: str
    size: tuple[int, int]
    orientation: int
    # The part of the decoded (upright) image the picture fills where a reduced decode rounded
    # the size up (1001 px at 1/4: 251 px holding 250.25): resizing all of it would stretch it.
    picture_box: tuple[float, float, float, float] | None = None


Shrink = Callable[[int, int], tuple[int, int]]  # (width, height) -> the size the caller resizes to


def decode_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_side: int | None = DEFAULT_MAX_SIDE, pixels_hint: str = MAX_PIXELS_HINT,
                 shrink_to: Shrink | None = None) -> Image.Image:
    """`decode_with_header`'s image."""
    return decode_with_header(data, max_pixels, max_side, pixels_hint, shrink_to)[0]


def decode_with_header(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS,
                       max_side: int | None = DEFAULT_MAX_SIDE, pixels_hint: str = MAX_PIXELS_HINT,
                       shrink_to: Shrink | None = None) -> tuple[Image.Image, ImageHeader]:
    """Decode bytes to an RGB image no larger than max_side on its longest edge, with the header
    it was decoded from. `shrink_to(width, height)`: the size the caller will resize to; a JPEG
    is then decoded at the largest DCT reduction that stays at or above it. Raises
    ImageDecodeError with a status (over `max_pixels`: too_large, ending with `pixels_hint`).
    Animated images yield their first frame; EXIF orientation is applied."""
    if data is None:
        raise ImageDecodeError(MISSING_IMAGE, "the sample has no image (a null image cell, or no image file)")
    if len(data) == 0:
        raise ImageDecodeError(EMPTY_IMAGE, "image file is zero bytes")
    data = with_end_marker(data, max_pixels)
    _allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            stored = (jpeg_or_format(img.format), img.mode, img.size)
            width, height = img.size
            if width * height > max_pixels:
                raise too_many_pixels(width * height, max_pixels, (width, height), pixels_hint)
            if shrink_to is None and max_side and max(width, height) > max_side:
                shrink_to = partial(_fit_long_side, max_side)
            reduced_box = None
            if shrink_to is not None and stored[0] == "JPEG":
                # libjpeg decodes at 1/2, 1/4 or 1/8, keeping both sides >= the shrunk size
                # asked for (proportional, so EXIF rotation afterwards asks the same scale).
                drafted = img.draft("RGB", shrink_to(width, height))
                reduced_box = drafted[1] if drafted else None
            img.load()
            orientation = img.getexif().get(ORIENTATION, 1)
            if orientation != 1:  # (exif_transpose copies even when upright)
                img = ImageOps.exif_transpose(img)
            header = ImageHeader(*stored, orientation, _picture_box(img.size, reduced_box, orientation))
            img = _to_rgb(img)
            if max_side and (max(img.size) > max_side or header.picture_box):
                img, header = _fit_within(img, header, max_side)
            return img, header
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's bomb check (on open, or on a later frame).
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else max_pixels + 1
        if pixels <= max_pixels:  # under ours, over a lower limit this process set for Pillow
            raise ImageDecodeError(
                TOO_LARGE, f"{pixels} pixels, over Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels "
                "(PIL.Image.MAX_IMAGE_PIXELS, lowered in this process)"
            ) from exc
        raise too_many_pixels(pixels, max_pixels, hint=pixels_hint) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(DECODE_ERROR, UNIDENTIFIED) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(DECODE_ERROR, _stable(f"{type(exc).__name__}: {exc}")) from exc


ORIENTATION = 0x0112  # the EXIF tag
# Whether a reduced decode's padded last column and row (libjpeg pads the stored image's right
# and bottom) end up on the left and top once the EXIF orientation is applied.
_PADDING_LEFT_TOP = {1: (False, False), 2: (True, False), 3: (True, True), 4: (False, True),
                     5: (False, False), 6: (True, False), 7: (True, True), 8: (False, True)}


def _picture_box(size: tuple[int, int], reduced_box: tuple[int, int, float, float] | None,
                 orientation: int) -> tuple[float, float, float, float] | None:
    """Where the picture lies in the upright decoded image of `size`, given the box the reduced
    decode reported in stored orientation; None when it fills the image."""
    if reduced_box is None:
        return None
    width, height = reduced_box[2], reduced_box[3]
    if orientation in (5, 6, 7, 8):  # (these turn the image a quarter)
        width, height = height, width
    if (width, height) == size:
        return None
    left, top = _PADDING_LEFT_TOP.get(orientation, (False, False))
    x0, y0 = (size[0] - width if left else 0), (size[1] - height if top else 0)
    return x0, y0, x0 + width, y0 + height


def _fit_within(img: Image.Image, header: ImageHeader, side: int) -> tuple[Image.Image, ImageHeader]:
    """The image shrunk to fit `side` (never enlarged), from its picture box: all picture."""
    box = header.picture_box
    if box is None:
        img.thumbnail((side, side), Image.Resampling.BICUBIC)
        return img, header
    width, height = box[2] - box[0], box[3] - box[1]
    scale = min(1.0, side / max(width, height))
    size = max(1, round(width * scale)), max(1, round(height * scale))
    resized = img.resize(size, Image.Resampling.BICUBIC, box=box, reducing_gap=2.0)  # (thumbnail's gap)
    return resized, replace(header, picture_box=None)


def _fit_long_side(side: int, width: int, height: int) -> tuple[int, int]:
    scale = side / max(width, height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def decode_sample(sample: Sample, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_side: int | None = DEFAULT_MAX_SIDE) -> Sample:
    """Fill sample.image, or mark the sample failed; frees the encoded bytes either way."""
    if not sample.ok:
        return sample
    try:
        sample.image = decode_image(sample.image_bytes, max_pixels=max_pixels, max_side=max_side)
    except ImageDecodeError as exc:
        sample.fail(exc.status, str(exc))
    sample.image_bytes = None
    return sample
