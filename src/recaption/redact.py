"""Secrets out of every message recaption stores or prints.

Error messages are built from what servers and libraries say (an error body, an exception's text,
a URL), and those can carry secrets: a server that echoes the API key it was sent, credentials
written into an endpoint or metadata URL (`http://user:pass@host/v1`), a signed query string.
`redact` masks them before a message reaches a parquet column, a stats file, a log or the console:

    redact("http://me:hunter2@host/v1: HTTP 401 bad key sk-abc123def456", secrets=[key])
    -> "http://***@host/v1: HTTP 401 bad key sk-***"

URLs that are stored (a row's `url`, a tar's .json) go through `strip_url_secrets` instead; text
a server wrote that is kept (a caption) through `mask_secrets`, the configured secrets only.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter "secrets" would mask ordinary words

# scheme://userinfo@ -> scheme://***@  (userinfo cannot hold / ? # or whitespace)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s@'\"<>]+@")
# Authorization: <anything up to the end of the value>, and Bearer / Basic credentials anywhere
_AUTH_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\"'\r\n,}]+)"
)
_SCHEME_CREDENTIALS = re.compile(r"(?i)(?P<name>\b(?:bearer|basic)\s+)(?P<value>[A-Za-z0-9._~+/=\-]{4,})")
# api_key=..., "api_key": "...", x-api-key: ..., ?key=..., &sig=... (signed URLs)
_SECRET_NAMES = (
    r"(?:x-)?api[_-]?key|apikey|access[_-]?token|auth[_-]?token|refresh[_-]?token|id[_-]?token"
    r"|client[_-]?secret|secret[_-]?key|secret|password|passwd|x-amz-signature|x-amz-credential"
    r"|x-amz-security-token|x-goog-signature|x-goog-credential"
)
_KEY_VALUE = re.compile(
    rf"(?i)(?P<name>(?<![\w-])[\"']?(?:{_SECRET_NAMES})[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"'&,;}}#<>]+)"
)
_QUERY_VALUE = re.compile(r"(?i)(?P<name>[?&;](?:key|token|sig|signature|code)=)(?P<value>[^\s\"'&;#<>]+)")
# Token formats that are secrets wherever they appear.
_TOKENS = re.compile(
    r"\b(?P<prefix>sk-|sk_live_|sk_test_|rk_live_|hf_|gh[pousr]_|glpat-|xox[abprs]-)[A-Za-z0-9_\-]{8,}"
    r"|\b(?P<aws>AKIA|ASIA)[0-9A-Z]{16}\b"
)


def redact(text: str | None, secrets: Iterable[str | None] = ()) -> str | None:
    """`text` with secrets masked: each given secret value (and its URL-encoded form), URL
    userinfo, Authorization / Bearer / Basic credentials, secret-named parameters (api_key=,
    "api_key": ..., ?key=, &sig=) and well-known token formats (sk-..., hf_..., ghp_...)."""
    if not text:
        return text
    text = mask_secrets(text, secrets)
    text = _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
    text = _AUTH_HEADER.sub(lambda m: m["name"] + MASK, text)
    text = _SCHEME_CREDENTIALS.sub(lambda m: m["name"] + MASK, text)
    text = _KEY_VALUE.sub(lambda m: m["name"] + MASK, text)
    text = _QUERY_VALUE.sub(lambda m: m["name"] + MASK, text)
    text = _TOKENS.sub(lambda m: (m["prefix"] or m["aws"]) + MASK, text)
    return text


def mask_secrets(text: str | None, secrets: Iterable[str | None]) -> str | None:
    """`text` with each given secret value (and its URL-encoded forms) masked, nothing else: for
    text a server wrote that is kept (a caption, a judge's reply), where the patterns of `redact`
    would mask ordinary words ("a basic table")."""
    if not text:
        return text
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, MASK)
    return text


# Query parameters that carry credentials in signed or authenticated URLs (S3, GCS, Azure SAS,
# CloudFront, OAuth, API keys), matched ignoring case.
_CREDENTIAL_PARAMS = re.compile(
    r"(?i)^(?:x-amz-.+|x-goog-.+|(?:[a-z_-]*[_-])?(?:token|secret|password|passwd|signature|credential|"
    r"session)s?|key|api[_-]?key|apikey|sig|pwd|auth|authorization|policy|key-pair-id|code|jwt)$"
)


def strip_url_secrets(url: str | None) -> str | None:
    """A URL fit to store: userinfo dropped and the values of credential-like query parameters
    (token, sig, signature, X-Amz-*, key, api_key, access_token, ...) masked. The fetch itself
    uses the URL as given; this is what rows, .json files and logs keep. A string that is not a
    URL is returned as it is."""
    if not url or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        query, fragment = _mask_params(parts.query), _mask_params(parts.fragment)  # #access_token=
    except ValueError:
        return redact(url)
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def _mask_params(text: str) -> str:
    """A query string (or fragment) with the values of credential-like parameters masked."""
    if "=" not in text:
        return text
    pairs = parse_qsl(text, keep_blank_values=True)
    masked = [(k, MASK if _CREDENTIAL_PARAMS.match(k) else v) for k, v in pairs]
    return text if masked == pairs else urlencode(masked, safe="*/:")


def url_secrets(url: str | None) -> list[str]:
    """The credentials written into a URL (`http://user:pass@host` -> ["pass"]; a lone
    `http://token@host` -> ["token"]), decoded and as written, for `redact(..., secrets=)`."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError:
        return []
    found = [password] if password else [username] if username else []
    forms = [form for value in found for form in {value, unquote(value)} if form]
    if username is not None:  # sent as basic auth: base64("user:pass"), which a server may echo
        pair = f"{unquote(username)}:{unquote(password or '')}".encode()
        forms.append(base64.b64encode(pair).decode("ascii"))
    return forms
