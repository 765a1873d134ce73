"""Downloaded bytes -> the image to store: verify, decode (pixel limit), check, resize, encode.

CPU work, run in a thread pool beside the event loop (Pillow releases the GIL while it decodes
and resizes). Resize modes follow img2dataset's: keep_ratio (short side = image_size),
center_crop (then the centre square), border (long side = image_size, padded white to a
square), none.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, ImageOps

from ..samples.images import ImageDecodeError, decode_image
from ..samples.sample import TOO_LARGE as PIXEL_LIMIT
from . import outcomes as oc
from .config import DownloadConfig

KEEP_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
ENCODERS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


@dataclass
class StoredImage:
    data: bytes
    ext: str
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str  # of the downloaded bytes, as DataComp's sha256 column is


class ProcessError(Exception):
    def __init__(self, outcome: str, message: str, sha256: str | None = None):
        super().__init__(message)
        self.outcome = outcome
        self.sha256 = sha256


def process_image(
    data: bytes, expected_sha256: str | None, cfg: DownloadConfig, content_type: str | None = None
) -> StoredImage:
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and expected_sha256.strip().lower() != digest:
        raise ProcessError(
            oc.HASH_MISMATCH, f"SHA-256 {digest} is not the expected {expected_sha256}", digest
        )
    try:
        image = decode_image(data, max_pixels=cfg.max_pixels, max_side=None,
                             pixels_hint="DownloadConfig.max_pixels sets it")
    except ImageDecodeError as exc:
        outcome = oc.TOO_MANY_PIXELS if exc.status == PIXEL_LIMIT else oc.DECODE_ERROR
        message = str(exc)
        if outcome == oc.DECODE_ERROR and content_type and not content_type.startswith("image/"):
            message = f"not an image (Content-Type {content_type}): {message}"
        raise ProcessError(outcome, message, digest) from exc
    width, height = image.size
    if min(width, height) < cfg.min_size:
        raise ProcessError(oc.TOO_SMALL, f"{width}x{height} is under --min-size {cfg.min_size}", digest)
    if cfg.max_aspect_ratio and max(width, height) / min(width, height) > cfg.max_aspect_ratio:
        raise ProcessError(
            oc.BAD_ASPECT_RATIO,
            f"aspect ratio {max(width, height) / min(width, height):.2f} over {cfg.max_aspect_ratio}",
            digest,
        )
    try:
        resized = resize(image, cfg.resize, cfg.image_size)
        encoded, ext = encode(resized, data, cfg, unchanged=resized is image)
    except (OSError, ValueError, MemoryError) as exc:
        # One image the encoder refuses (a 10000x40 banner resized past JPEG's 65,500 px) is
        # that row's failure, never the shard's.
        raise ProcessError(
            oc.ENCODE_ERROR,
            f"cannot resize ({cfg.resize}, {cfg.image_size}) and encode as {cfg.format}: {exc}",
            digest,
        ) from exc
    return StoredImage(encoded, ext, resized.width, resized.height, width, height, digest)


def resize(image: Image.Image, mode: str, size: int) -> Image.Image:
    if mode == "none":
        return image
    if mode == "border":
        scale = size / max(image.size)
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        fitted = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return ImageOps.pad(fitted, (size, size), color=(255, 255, 255))
    scale = size / min(image.size)
    target = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
    resized = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if mode == "center_crop":
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        return resized.crop((left, top, left + size, top + size))
    return resized  # keep_ratio


def encode(image: Image.Image, original: bytes, cfg: DownloadConfig, unchanged: bool) -> tuple[bytes, str]:
    fmt = cfg.format
    if fmt == "keep":
        source_format = Image.open(io.BytesIO(original)).format
        if unchanged and source_format in KEEP_EXTENSIONS:
            return original, KEEP_EXTENSIONS[source_format]  # byte for byte what the server sent
        fmt = (
            KEEP_EXTENSIONS.get(source_format, "jpg")
            if KEEP_EXTENSIONS.get(source_format) in ENCODERS
            else "jpg"
        )
    buf = io.BytesIO()
    options = {"quality": cfg.quality} if fmt in ("jpg", "webp") else {}
    image.save(buf, format=ENCODERS[fmt], **options)
    return buf.getvalue(), fmt
