"""Downloaded bytes -> the image to store: verify, decode (pixel limit), check, resize, encode.
Run in a thread pool beside the event loop; resize modes are img2dataset's (docs/download.md)."""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np
from PIL import Image, ImageOps

from ..samples.images import ImageDecodeError, ImageHeader, decode_with_header, with_end_marker
from ..samples.sample import TOO_LARGE as PIXEL_LIMIT
from . import outcomes as oc
from .config import DownloadConfig
from .plain_jpeg import REDUCED_DECODE_MARGIN, decodes_cleanly, plain_jpeg_size, resize_plain_jpeg

KEEP_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
ENCODERS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
# --resample auto: Lanczos after a reduced JPEG decode (cheap there, where Hamming falls behind
# INTER_AREA), Hamming elsewhere (half Lanczos's cost, INTER_AREA's quality: docs/benchmarks.md),
# plain_jpeg's path for a plain JPEG stored as JPEG at keep_ratio that no reduced decode fits.
RESAMPLING = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
              "hamming": Image.Resampling.HAMMING, "bilinear": Image.Resampling.BILINEAR}


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


def process_image(data: bytes, expected_sha256: str | None, cfg: DownloadConfig,
                  content_type: str | None = None) -> StoredImage:
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and expected_sha256.strip().lower() != digest:
        raise ProcessError(oc.HASH_MISMATCH, f"SHA-256 {digest} is not the expected {expected_sha256}",
                           digest)
    data = with_end_marker(data, cfg.max_pixels)  # (stored so: a reader needs the marker too)
    resized_fast = cfg.resample == "auto" and cfg.resize == "keep_ratio" and cfg.format == "jpg"
    if resized_fast or (cfg.resize == "none" and cfg.format in ("jpg", "keep")):
        stored = _plain_jpeg(data, cfg, digest)
        if stored is not None:
            return stored
    try:
        # Only as many pixels as the resize needs are decoded (a JPEG's DCT-domain reduction).
        shrink_to = None if cfg.resize == "none" else partial(_decode_size, cfg.resize, cfg.image_size)
        image, header = decode_with_header(data, cfg.max_pixels, max_side=None, shrink_to=shrink_to)
    except ImageDecodeError as exc:
        outcome = oc.TOO_MANY_PIXELS if exc.status == PIXEL_LIMIT else oc.DECODE_ERROR
        message = str(exc)
        if outcome == oc.DECODE_ERROR and content_type and not content_type.startswith("image/"):
            message = f"not an image (Content-Type {content_type}): {message}"
        raise ProcessError(outcome, message, digest) from exc
    sent = SentImage.of(header, image)
    width, height = sent.size
    _check_shape(width, height, cfg, digest)
    try:
        resized = resize(image, cfg.resize, cfg.image_size, _filter(cfg.resample, image, sent), sent.size,
                         header.picture_box)
        encoded, ext = encode(resized, data, cfg, sent)
    except (OSError, ValueError, MemoryError) as exc:
        # One image the encoder refuses (a 10000x40 banner resized past JPEG's 65,500 px) is
        # that row's failure, never the shard's.
        raise ProcessError(oc.ENCODE_ERROR, f"cannot resize ({cfg.resize}, {cfg.image_size}) and encode as "
                           f"{cfg.format}: {exc}", digest) from exc
    return StoredImage(encoded, ext, resized.width, resized.height, width, height, digest)


def _check_shape(width: int, height: int, cfg: DownloadConfig, digest: str) -> None:
    """--min-size, --max-aspect-ratio and the resized size's pixels, on the size as sent."""
    if min(width, height) < cfg.min_size:
        raise ProcessError(oc.TOO_SMALL, f"{width}x{height} is under --min-size {cfg.min_size}", digest)
    if cfg.max_aspect_ratio and (ratio := max(width, height) / min(width, height)) > cfg.max_aspect_ratio:
        raise ProcessError(oc.BAD_ASPECT_RATIO, f"aspect ratio {ratio:.2f} over {cfg.max_aspect_ratio}",
                           digest)
    if cfg.resize == "keep_ratio":  # (border and center_crop make image_size^2: checked in the config)
        target = target_size(cfg.resize, cfg.image_size, width, height)
        if target[0] * target[1] > cfg.max_pixels:  # a 100000x2 banner at keep_ratio: 10^10 pixels
            raise ProcessError(oc.TOO_MANY_PIXELS, f"{width}x{height} resized ({cfg.resize}, "
                               f"{cfg.image_size}) would be {target[0]}x{target[1]}, over --max-pixels "
                               f"{cfg.max_pixels} (--max-aspect-ratio refuses such shapes earlier)", digest)


def _plain_jpeg(data: bytes, cfg: DownloadConfig, digest: str) -> StoredImage | None:
    """plain_jpeg's GIL-free path, for a plain JPEG stored as sent or resized where no reduced
    decode fits (None: not such a JPEG, or one libjpeg warns about: Pillow's path takes it)."""
    size = plain_jpeg_size(data)
    if size is None or size[0] * size[1] > cfg.max_pixels:
        return None
    width, height = size
    if cfg.resize == "none":
        target = size
    else:
        reduced = _decode_size(cfg.resize, cfg.image_size, width, height)
        if min(width // reduced[0], height // reduced[1]) >= 2:  # a 1/2 decode fits: Pillow's draft
            return None
        target = target_size(cfg.resize, cfg.image_size, width, height)
    if max(target) > JPEG_MAX_SIDE:  # the encoder refuses it: Pillow's path says so
        return None
    if target == size:  # stored byte for byte, as `encode` does, once libjpeg read it all
        encoded = data if decodes_cleanly(data, size) else None
    else:
        encoded = resize_plain_jpeg(data, size, target, cfg.quality)
    if encoded is None:  # libjpeg warned: Pillow's path judges the file
        return None
    _check_shape(width, height, cfg, digest)  # (after the decode, as on Pillow's path)
    return StoredImage(encoded, "jpg", target[0], target[1], width, height, digest)


@dataclass(frozen=True)
class SentImage:
    """What the server's bytes say about the image before any decoding: its upright size (a
    reduced decode does not show it; --min-size, the aspect ratio and original_width/height
    are about this), its format, and whether its pixels are stored as they are decoded."""

    size: tuple[int, int]
    format: str | None
    plain: bool  # RGB or grey, no EXIF rotation: decoding changes nothing but the encoding

    @classmethod
    def of(cls, header: ImageHeader, decoded: Image.Image) -> SentImage:
        """From the header the pixels were decoded from. Only a JPEG is decoded reduced; any
        other format's decoded (upright) size is the size sent."""
        if header.format != "JPEG":
            plain = header.mode in ("RGB", "L") and decoded.size == header.size
            return cls(decoded.size, header.format, plain)
        width, height = header.size
        size = (height, width) if header.orientation in (5, 6, 7, 8) else (width, height)
        return cls(size, header.format, header.orientation == 1 and header.mode in ("RGB", "L"))


def _filter(resample: str, decoded: Image.Image, sent: SentImage) -> Image.Resampling:
    if resample != "auto":
        return RESAMPLING[resample]
    reduced = decoded.width * decoded.height < sent.size[0] * sent.size[1]
    return Image.Resampling.LANCZOS if reduced else Image.Resampling.HAMMING


def _decode_size(mode: str, size: int, width: int, height: int) -> tuple[int, int]:
    """The smallest size a reduced decode may give for this resize."""
    target = target_size(mode, size, width, height)
    return math.ceil(target[0] * REDUCED_DECODE_MARGIN), math.ceil(target[1] * REDUCED_DECODE_MARGIN)


def target_size(mode: str, size: int, width: int, height: int) -> tuple[int, int]:
    """The size `resize` scales an image of this size to, before any crop or padding."""
    if mode == "border":
        scale = size / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def resize(image: Image.Image, mode: str, size: int, resample: Image.Resampling = Image.Resampling.LANCZOS,
           source_size: tuple[int, int] | None = None,
           picture_box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """Resize for `mode`; `source_size`: the image's size as sent when `image` was decoded
    reduced (the target is computed from it, so a reduced decode gives the same size), and
    `picture_box` the part of it the picture fills (ImageHeader.picture_box)."""
    if mode == "none":
        return image
    target = target_size(mode, size, *(source_size or image.size))
    x0, y0, x1, y1 = picture_box or (0, 0, *image.size)
    if mode == "center_crop":
        # Only the centre square is resized (Pillow's `box`), never the whole image at the
        # target's scale (a 100000x2 banner would be 25,600,000x512 pixels before the crop).
        left, top = (target[0] - size) // 2, (target[1] - size) // 2
        if image.size == target and picture_box is None:
            return image.crop((left, top, left + size, top + size))
        sx, sy = (x1 - x0) / target[0], (y1 - y0) / target[1]
        box = (x0 + left * sx, y0 + top * sy, x0 + (left + size) * sx, y0 + (top + size) * sy)
        return image.resize((size, size), resample, box=box, reducing_gap=3.0)
    unchanged = image.size == target and picture_box is None
    resized = image if unchanged else image.resize(target, resample, box=(x0, y0, x1, y1), reducing_gap=3.0)
    if mode == "border":
        return ImageOps.pad(resized, (size, size), color=(255, 255, 255))
    return resized  # keep_ratio


def encode(image: Image.Image, original: bytes, cfg: DownloadConfig, sent: SentImage) -> tuple[bytes, str]:
    """The bytes to store. An image not resized is stored byte for byte as the server sent it
    with --format keep, and with jpg when it is a plain JPEG (RGB or grey, upright): re-encoding
    it would only lose quality and time."""
    fmt, source_format = cfg.format, sent.format
    not_resized = image.size == sent.size
    if not_resized and sent.plain and fmt == "jpg" and source_format == "JPEG":
        return original, fmt
    if fmt == "keep":
        if not_resized and source_format in KEEP_EXTENSIONS:
            return original, KEEP_EXTENSIONS[source_format]  # byte for byte what the server sent
        fmt = ext if (ext := KEEP_EXTENSIONS.get(source_format)) in ENCODERS else "jpg"
    if fmt == "jpg" and image.mode == "RGB":  # (what decode_image gives)
        return encode_jpeg(image, cfg.quality), fmt
    buf = io.BytesIO()
    options = {"quality": cfg.quality} if fmt == "webp" else {}
    image.save(buf, format=ENCODERS[fmt], **options)
    return buf.getvalue(), fmt


JPEG_MAX_SIDE = 65500


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """libjpeg-turbo through OpenCV (as img2dataset encodes): the same bytes as Pillow's encoder
    with the same settings, but Pillow holds the GIL for the whole encode, so the download's
    worker threads queued on it, and OpenCV releases it (docs/benchmarks.md)."""
    if max(image.size) > JPEG_MAX_SIDE:  # (OpenCV would also log the refusal to stderr)
        raise ValueError(f"a JPEG holds at most {JPEG_MAX_SIDE} px a side, not {image.width}x{image.height}")
    pixels = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)  # the channel order OpenCV encodes
    try:
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    except cv2.error as exc:
        raise ValueError(f"JPEG encoder: {str(exc).strip().splitlines()[-1]}") from None
    if not ok:
        raise ValueError(f"JPEG encoder refused a {image.width}x{image.height} image")
    return encoded.tobytes()
