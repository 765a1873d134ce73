"""What happened to each URL: an exact `outcome` per row, plus img2dataset's coarser `status`."""

from __future__ import annotations

OK = "ok"
BAD_URL = "bad_url"  # not http(s), no host, unparsable
BLOCKED_ADDRESS = "blocked_address"  # resolves to a private / loopback / link-local / multicast address
HTTP_ERROR = "http_error"  # a status other than 200 (the code is in http_status)
TIMEOUT = "timeout"  # no complete response within --timeout
CONNECTION_ERROR = "connection_error"  # refused, reset, DNS failure, TLS error
TRUNCATED = "truncated"  # the connection closed before the body was complete
TOO_MANY_REDIRECTS = "too_many_redirects"
TOO_LARGE = "too_large"  # body over the byte limit
OPTED_OUT = "opted_out"  # X-Robots-Tag: noai, noimageai, noindex, ...
HASH_MISMATCH = "hash_mismatch"  # the bytes' SHA-256 is not the metadata's
DECODE_ERROR = "decode_error"  # not an image Pillow can decode (wrong content type, corrupt)
TOO_MANY_PIXELS = "too_many_pixels"  # over the pixel limit (--max-pixels), as sent or once resized
TOO_SMALL = "too_small"  # smaller than --min-size
BAD_ASPECT_RATIO = "bad_aspect_ratio"  # over --max-aspect-ratio
ENCODE_ERROR = "encode_error"  # decoded, but the resize or the encoder refused it (too wide for JPEG)
PLACEHOLDER = "placeholder"  # a host's "image unavailable" picture (samples/placeholders.py), not stored

# img2dataset's status column: success | failed_to_download | failed_to_resize
SUCCESS, FAILED_TO_DOWNLOAD, FAILED_TO_RESIZE = "success", "failed_to_download", "failed_to_resize"
_RESIZE_FAILURES = {DECODE_ERROR, TOO_MANY_PIXELS, TOO_SMALL, BAD_ASPECT_RATIO, ENCODE_ERROR}


def status_of(outcome: str) -> str:
    if outcome == OK:
        return SUCCESS
    return FAILED_TO_RESIZE if outcome in _RESIZE_FAILURES else FAILED_TO_DOWNLOAD


def retry_on_rerun(outcome: str, http_status: int | None) -> bool:
    """Rows `--retry-failed` fetches again: transient failures (the server or network, not the URL),
    and rows refused as private addresses (a rerun may allow them; a host's address can change)."""
    if outcome in (BLOCKED_ADDRESS, TIMEOUT, CONNECTION_ERROR, TRUNCATED):
        return True
    return outcome == HTTP_ERROR and http_status is not None and (http_status == 429 or http_status >= 500)


# The fetch-policy setting (DownloadConfig.fetch_policy) whose loosening may turn these rows into
# successes: a rerun that loosens it fetches them again.
POLICY_OUTCOMES = {
    "allow_private_network": BLOCKED_ADDRESS,
    "disallowed_directives": OPTED_OUT,
    "max_bytes": TOO_LARGE,
    "max_pixels": TOO_MANY_PIXELS,
    "max_redirects": TOO_MANY_REDIRECTS,
    "placeholder_min_urls": PLACEHOLDER,
}
