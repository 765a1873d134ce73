"""The unit that flows through the pipeline: one image-text sample and its outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Outcome kinds written to the `status` column. Anything but OK has a message in `error`.
OK = "ok"
EMPTY_IMAGE = "empty_image"
MISSING_IMAGE = "missing_image"  # no image in the sample, or its file is not there
DECODE_ERROR = "decode_error"
TOO_LARGE = "too_large"  # over the pixel limit, or a file over the bytes read per image
READ_ERROR = "read_error"  # the image file exists but cannot be read (permissions, I/O error)
CAPTION_ERROR = "caption_error"


@dataclass
class Sample:
    """One row of input as a reader yields it (identity fields, `image_bytes`), and what later
    stages learn: the decoded `image` or a failure, `captions` by output column."""

    key: str
    url: str | None = None
    org_caption: str | None = None
    sha256: str | None = None
    image_bytes: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    image: Any = None  # PIL.Image.Image in RGB once decoded
    status: str = OK
    error: str | None = None
    captions: dict[str, str | None] = field(default_factory=dict)  # output column -> caption
    truncated: dict[str, bool] = field(default_factory=dict)  # output column -> hit max_new_tokens
    scores: dict[str, Any] = field(default_factory=dict)  # re_clip_score, org_clip_score, ... when scored
    # (source shard, row) when an earlier output's row of this very image is kept instead of
    # captioning it again (captioning/carry.py)
    carried: tuple[str, dict] | None = None

    # The paper's pass, by its published column name (what score, judge and report read).
    @property
    def re_caption(self) -> str | None:
        return self.captions.get("re_caption")

    @re_caption.setter
    def re_caption(self, text: str | None) -> None:
        self.captions["re_caption"] = text

    @property
    def re_truncated(self) -> bool | None:
        return self.truncated.get("re_caption")

    @re_truncated.setter
    def re_truncated(self, value: bool | None) -> None:
        self.truncated["re_caption"] = value

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def to_caption(self) -> bool:
        """Ok, and not kept from an earlier output: the model has work to do."""
        return self.status == OK and self.carried is None

    def fail(self, status: str, error: str) -> None:
        self.status = status
        self.error = error
        self.image = None


def as_text(value) -> str | None:
    """A text field from whatever a column holds: a string as it is, bytes as UTF-8, a number as
    its digits, None as None; never a repr such as "b'...'". Invalid bytes and lone surrogates
    become U+FFFD (they cannot be written as UTF-8)."""
    if value is None:
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            try:  # a file name's bytes that are not UTF-8, as the OS hands them over: one U+FFFD each
                return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
            except UnicodeEncodeError:
                return value.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


MAX_CAPTION_CHARS = 20_000  # a caption file is a caption: a 1 MB text file is not one


def caption_text(data: bytes, warn) -> str | None:
    """A caption file's text (a folder's `.txt` sidecar, a tar's `.txt` member): UTF-8 (a BOM
    dropped) or UTF-16 with its BOM, stripped, capped at MAX_CAPTION_CHARS; anything else (latin-1,
    binary) is not used, `warn(why)` says so, rather than stored garbled."""
    encoding = "utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        warn(f"not used: not {encoding.upper().replace('-SIG', '')} text (save it as UTF-8)")
        return None
    if "\x00" in text:
        warn("not used: it holds NUL characters, not text")
        return None
    text = text.strip()
    if len(text) > MAX_CAPTION_CHARS:
        warn(f"cut to its first {MAX_CAPTION_CHARS} of {len(text)} characters")
        text = text[:MAX_CAPTION_CHARS]
    return text
