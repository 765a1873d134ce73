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
from urllib.parse import quote, unquote, unquote_plus, urlsplit, urlunsplit

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter "secrets" would mask ordinary words

# scheme://userinfo@ -> scheme://***@  (userinfo cannot hold / ? # or whitespace)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s@'\"<>]+@")
# Authorization: <anything up to the end of the value>, and Bearer / Basic credentials anywhere
_AUTH_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\"'\r\n,}]+)"
)
_SCHEME_CREDENTIALS = re.compile(r"(?i)(?P<name>\b(?:bearer|basic)\s+)(?P<value>[A-Za-z0-9._~+/=\-]{4,})")
# api_key=..., "api_key": "...", x-api-key: ..., ?key=..., &sig=... (signed URLs, tokens in a path);
# but `/etc/passwd: not a tar` is a message about a file (`_key_value`)
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
    text = _KEY_VALUE.sub(_key_value, text)
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


# Query parameters that carry credentials in signed or authenticated URLs (S3, GCS, Azure SAS and
# subscription keys, CloudFront, OAuth, sessions, API keys), matched on the decoded name ignoring
# case: a credential word as the whole name or as one of its `_` / `-` separated parts
# (secret_key, x-api-key, aws_secret_access_key, sessionid), and the signed-URL families.
_CREDENTIAL_WORDS = (r"key|keys|token|tokens|secret|secrets|password|passwd|pass|pwd|sig|signature|auth"
                     r"|authorization|credential|credentials|session|sessionid|sid|jwt|apikey|code|policy")
_CREDENTIAL_PARAMS = re.compile(
    rf"(?i)^(?:x-amz-.+|x-goog-.+|(?:.*[_-])?(?:{_CREDENTIAL_WORDS})(?:[_-].*)?|key-pair-id)$"
)
_PARAM_SEPARATOR = re.compile(r"([&;])")


def strip_url_secrets(url: str | None) -> str | None:
    """A URL fit to store: userinfo dropped and the values of credential-like query (and
    fragment) parameters masked, everything else left exactly as written. The fetch itself uses
    the URL as given; this is what rows, .json files and logs keep. Scheme-less URLs
    (`//user:pw@host/x`, `host/x?token=...`) are treated the same."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = host if at and not any(c in userinfo for c in "\\/") else parts.netloc
    query, fragment = _mask_params(parts.query), _mask_params(parts.fragment)  # #access_token=
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def _mask_params(text: str) -> str:
    """A query string (or fragment) with the values of credential-like parameters masked; the
    other parameters byte for byte as they were (no re-encoding)."""
    if "=" not in text:
        return text
    pieces = _PARAM_SEPARATOR.split(text)  # parameters and the separators between them
    for i in range(0, len(pieces), 2):
        name, eq, _ = pieces[i].partition("=")
        if eq and _CREDENTIAL_PARAMS.match(unquote_plus(name).strip()):
            pieces[i] = f"{name}={MASK}"
    return "".join(pieces)


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


def _key_value(match: re.Match) -> str:
    """The name with its value masked, unless it is a file named like a secret in a message (a
    path's last part, then `: `): `/etc/passwd: not a tar` stays, `/x/password=...` does not."""
    start = match.start()
    after_path = start > 0 and match.string[start - 1] == "/"
    then_colon = not match["name"].rstrip(" \"'").endswith("=")
    return match.group(0) if after_path and then_colon else match["name"] + MASK
