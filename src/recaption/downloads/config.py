"""Settings of `recap download`, one dataclass; the CLI only maps flags onto it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..samples.images import DEFAULT_MAX_PIXELS
from ..samples.placeholders import DEFAULT_MIN_URLS

RESIZE_MODES = ("none", "keep_ratio", "center_crop", "border")
# How a row's key is made: img2dataset's (shard number and position: changes when the shard size
# does), the row's own id (`id_col`), or a hash of its URL; the last two survive resharding.
KEY_FORMATS = ("img2dataset", "id", "url")
FORMATS = ("jpg", "png", "webp", "keep")
RESAMPLE_FILTERS = ("auto", "hamming", "lanczos", "bicubic", "bilinear")  # process.RESAMPLING
# img2dataset's default opt-out directives, plus "none" (= noindex, nofollow).
DEFAULT_DISALLOWED = ("noai", "noimageai", "noindex", "noimageindex", "none")


@dataclass
class DownloadConfig:
    output: str
    url_col: str = "url"
    # None: the first of the usual caption columns the metadata has (caption, text, ... as
    # `recap caption` finds them); "": no caption; a name: that column, an error if missing.
    caption_col: str | None = None
    extra_cols: list[str] = field(default_factory=list)
    sha256_col: str | None = None  # verify the downloaded bytes against this column when given
    key_format: str = "img2dataset"
    id_col: str = "uid"  # key_format "id": the metadata column naming each row (DataComp's uid)
    shard_size: int = 10_000
    resize: str = "keep_ratio"
    image_size: int = 512
    resample: str = "auto"  # the resize filter (docs/download.md)
    max_aspect_ratio: float | None = None
    min_size: int = 0
    format: str = "jpg"
    quality: int = 95
    timeout: float = 10.0  # seconds: connect, redirects and the whole body together
    retries: int = 2
    retry_backoff: float = 0.5  # seconds before the first retry; doubles each time
    concurrency: int = 64
    per_host_concurrency: int = 8
    user_agent: str = "recaption/0.1 (+https://github.com/recaption; image-text research)"
    max_redirects: int = 5
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Placeholders (samples/placeholders.py): the same bytes from this many distinct URLs of one
    # host in a shard (0: never), or a sha256 in the `placeholders` file
    placeholder_min_urls: int = DEFAULT_MIN_URLS
    placeholders: str | None = None
    allow_private_network: bool = False
    # Rows and .json files keep URLs without userinfo and with credential-like query values
    # masked (redact.strip_url_secrets); True stores them as given, secrets included.
    keep_url_secrets: bool = False
    disallowed_directives: tuple[str, ...] = DEFAULT_DISALLOWED  # empty: ignore X-Robots-Tag
    overwrite: bool = False
    retry_failed: bool = False
    shards_in_flight: int = 2  # a shard's slow tail overlaps the next shard's start

    def __post_init__(self):
        choices = {"--resize": (self.resize, RESIZE_MODES), "--key-format": (self.key_format, KEY_FORMATS),
                   "--resample": (self.resample, RESAMPLE_FILTERS), "--format": (self.format, FORMATS)}
        for flag, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{flag} must be one of {', '.join(allowed)}")
        if self.key_format == "id" and self.id_col not in self.extra_cols:
            self.extra_cols = [*self.extra_cols, self.id_col]  # read it, and keep it in every row
        if self.shard_size < 1 or self.concurrency < 1 or self.per_host_concurrency < 1:
            raise ValueError("--shard-size, --concurrency and --per-host-concurrency must be positive")
        if not (math.isfinite(self.timeout) and self.timeout > 0) or self.retries < 0:  # nan: not > 0
            raise ValueError("--timeout must be a positive number of seconds and --retries at least 0")
        if not (math.isfinite(self.retry_backoff) and self.retry_backoff >= 0) or self.max_redirects < 0:
            raise ValueError("retry_backoff must be 0 or more seconds and max_redirects at least 0")
        if self.max_bytes < 1:
            raise ValueError("--max-bytes must be at least 1 (every image would be too_large)")
        if self.max_aspect_ratio is not None and not self.max_aspect_ratio >= 1:  # nan too
            raise ValueError("--max-aspect-ratio must be at least 1 (long side over short side)")
        if self.image_size < 1 and self.resize != "none":
            raise ValueError("--image-size must be at least 1 (or --resize none)")
        if self.max_pixels < 1:
            raise ValueError("--max-pixels must be at least 1")
        if self.resize != "none" and self.image_size**2 > self.max_pixels:
            raise ValueError(f"--image-size {self.image_size} makes every image at least {self.image_size}x"
                             f"{self.image_size} pixels, over --max-pixels {self.max_pixels}: lower "
                             "--image-size or raise --max-pixels")
        if self.placeholder_min_urls < 0 or self.placeholder_min_urls == 1:
            raise ValueError("--placeholder-min-urls must be 0 (off) or at least 2")
        if not 1 <= self.quality <= 100:
            raise ValueError("--quality must be between 1 and 100")

    @property
    def user_agent_token(self) -> str:
        """The product token X-Robots-Tag directives may address (`recaption: noai`)."""
        return self.user_agent.split("/", 1)[0].strip().lower()

    def fetch_policy(self) -> dict:
        """The settings that decide which rows may succeed, not what a stored row looks like.
        Recorded in each shard's marker: a rerun that loosens one fetches again the rows it
        refused (see downloader.policy_change); tightening one is refused."""
        keys = ("allow_private_network", "disallowed_directives", "max_bytes", "max_pixels", "max_redirects",
                "placeholder_min_urls")
        policy = {k: getattr(self, k) for k in keys}
        return {**policy, "disallowed_directives": sorted(self.disallowed_directives)}

    def provenance(self) -> dict:
        """The settings that decide what a stored row looks like (recorded in each marker)."""
        keys = ("url_col", "caption_col", "extra_cols", "sha256_col", "shard_size", "resize", "image_size",
                "resample", "max_aspect_ratio", "min_size", "format", "quality", "key_format", "id_col")
        return {k: getattr(self, k) for k in keys}
