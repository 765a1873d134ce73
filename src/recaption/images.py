"""Decode image bytes into RGB PIL images, turning every failure into a status instead of a crash."""

from __future__ import annotations

import io
import warnings

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


def decode_image(
    data: bytes | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> Image.Image:
    """Decode bytes to an RGB image no larger than max_side on its longest edge.

    Raises ImageDecodeError with a status kind for empty, undecodable or oversized input.
    Animated images yield their first frame; EXIF orientation is applied.
    """
    if data is None:
        raise ImageDecodeError(MISSING_IMAGE, "sample has no image member")
    if len(data) == 0:
        raise ImageDecodeError(EMPTY_IMAGE, "image file is zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    TOO_LARGE, f"{width}x{height} pixels exceeds the limit of {max_pixels}"
                )
            if max_side and max(width, height) > max_side and img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below the size we shrink
                # to anyway: far faster for big photos. Draft keeps both sides >= the request,
                # so ask for the shrunk size itself (asking for a square would stop it at 1/1).
                scale = max_side / max(width, height)
                img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            img = _to_rgb(img)
            if max_side and max(img.size) > max_side:
                img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            return img
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(TOO_LARGE, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(DECODE_ERROR, f"not a recognised image format: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(DECODE_ERROR, f"{type(exc).__name__}: {exc}") from exc


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
