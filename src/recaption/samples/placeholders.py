"""Placeholder images: a host's "image unavailable" picture served with status 200. Caught by list
(`--placeholders FILE` of sha256 digests) and by repetition (the same bytes from `min_urls` or
more distinct paths of one host within a download shard; query strings ignored); such a row gets
the `placeholder` outcome or status and no image (docs/download.md)."""

from __future__ import annotations

import re
from collections import defaultdict
from urllib.parse import urlsplit

from ..spine.errors import RecaptionError
from ..spine.files import read_input
from .sample import Sample

DEFAULT_MIN_URLS = 5
LIST_LIMIT = 64 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PlaceholderListError(RecaptionError, ValueError):
    """A placeholder list that cannot be read, or a line that is not a sha256."""


def read_placeholder_list(path: str | None) -> frozenset[str]:
    """The sha256 digests listed in `path` (none when no path is given)."""
    if not path:
        return frozenset()
    try:
        data = read_input(path, limit=LIST_LIMIT)
        if len(data) > LIST_LIMIT:
            raise PlaceholderListError(
                f"--placeholders {path}: over {LIST_LIMIT >> 20} MiB; is it a list of sha256 digests?")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlaceholderListError(f"--placeholders {path}: cannot read it ({exc})") from None
    digests = set()
    for number, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip().lower()
        if not value:
            continue
        if not _SHA256.match(value):
            raise PlaceholderListError(
                f"--placeholders {path}, line {number}: {value[:80]!r} is not a sha256 (64 hex digits)")
        digests.add(value)
    return frozenset(digests)


PLACEHOLDER = "placeholder"  # the outcome (download) and status (caption) of such a row


def listed_message(sha256: str) -> str:
    return f"its sha256 {sha256} is in the --placeholders list: not a photo"


def listed_placeholder(sample: Sample, digests: frozenset[str]) -> bool:
    """Mark a sample whose image is a listed placeholder failed (status placeholder, not
    captioned); True when it was."""
    if sample.ok and sample.sha256 in digests:
        sample.fail(PLACEHOLDER, listed_message(sample.sha256))
        sample.image_bytes = None
        return True
    return False


def list_provenance(digests: frozenset[str]) -> dict | None:
    """What a marker records of a placeholder list: how many, and a digest of them."""
    if not digests:
        return None
    import hashlib

    return {"count": len(digests), "sha256": hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()}


def repeated_placeholders(rows: list[dict], min_urls: int) -> dict[str, str]:
    """key -> why, for the ok rows whose bytes (sha256) came from `min_urls` or more distinct
    URLs of one host (0: never)."""
    if min_urls < 2:
        return {}
    urls: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:  # rows judged placeholders before (a --retry-failed rerun) count too
        if row.get("sha256") and row.get("outcome") in ("ok", PLACEHOLDER):
            host, path = _host_path(row["url"])
            urls[(row["sha256"], host)].add(path)
    repeated = {group: len(found) for group, found in urls.items() if len(found) >= min_urls}
    return {
        row["key"]: (f"the same image (sha256 {row['sha256'][:16]}...) came from {count} paths on "
                     f"{host or 'one host'}: a placeholder (--placeholder-min-urls {min_urls}; 0 keeps them)")
        for row in rows
        if row.get("outcome") == "ok"
        and (count := repeated.get((row.get("sha256"), host := _host_path(row["url"])[0]))) is not None
    }


def _host_path(url: str | None) -> tuple[str, str]:
    try:
        parts = urlsplit(url or "")
        return (parts.hostname or "").lower(), parts.path
    except ValueError:
        return "", url or ""
