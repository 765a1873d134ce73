"""Fetch one URL safely: http(s) only, no private addresses, bounded time, size and redirects.
Every way a fetch ends is a `FetchResult` with an outcome, never an exception; the time bound
covers DNS, connect, every redirect and the whole body, so no URL can hang a shard."""

from __future__ import annotations

import asyncio
import inspect
import random
import socket
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp
from yarl import URL

from . import outcomes as oc
from .addresses import ALLOW_HINT, address_blocked, address_kind, host_refused
from .config import DownloadConfig

REDIRECTS = (301, 302, 303, 307, 308)
RETRY_HTTP = {429, 500, 502, 503, 504}


@dataclass
class FetchResult:
    outcome: str
    data: bytes | None = None
    http_status: int | None = None
    error: str | None = None
    content_type: str | None = None
    retry_after: float | None = None
    attempts: int = 1


class BlockedAddress(OSError):
    """Raised by the connector: the host is, or resolves to, an address we must not connect to."""


def _guarded_socket(addr_info) -> socket.socket:
    """aiohttp's socket factory, the last gate: every TCP connection the session opens (first
    hops, redirects, retries) is checked on the address it is about to connect to."""
    family, type_, proto, _, sockaddr = addr_info
    if address_blocked(sockaddr[0]):
        raise BlockedAddress(f"refused to connect to {sockaddr[0]}, a {address_kind(sockaddr[0])} address; "
                             f"{ALLOW_HINT}")
    return socket.socket(family=family, type=type_, proto=proto)


class SafeConnector(aiohttp.TCPConnector):
    """A TCPConnector that refuses non-public addresses, so no request of the session reaches one:
    every host as the connection uses it (after yarl's IDNA normalisation: `①②⑦.⓪.⓪.①` is
    127.0.0.1), every address a name resolves to, and every socket's address (docs/download.md)."""

    def __init__(self, *, allow_private: bool, **options):
        self.allow_private = allow_private
        if not allow_private and "socket_factory" in inspect.signature(aiohttp.TCPConnector).parameters:
            options["socket_factory"] = _guarded_socket  # aiohttp >= 3.12
        super().__init__(resolver=aiohttp.ThreadedResolver(), **options)

    async def _resolve_host(self, host: str, port: int, traces=None):
        if not self.allow_private:
            reason = host_refused(host)
            if reason:
                raise BlockedAddress(reason)
        infos = await super()._resolve_host(host, port, traces=traces)
        if not self.allow_private:
            for info in infos:
                if address_blocked(info["host"]):
                    raise BlockedAddress(f"{host} resolves to {info['host']}, a "
                                         f"{address_kind(info['host'])} address; {ALLOW_HINT}")
        return infos


def _blocked_cause(exc: BaseException) -> BlockedAddress | None:
    """The BlockedAddress behind an aiohttp connection error, if any."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BlockedAddress):
            return current
        os_error = getattr(current, "os_error", None)
        if isinstance(os_error, BlockedAddress):
            return os_error
        current = current.__cause__ or current.__context__
    if ALLOW_HINT in str(exc):  # happy eyeballs folds several refusals into one OSError
        return BlockedAddress(str(getattr(exc, "os_error", exc)))
    return None


def robots_opt_out(values: list[str], user_agent_token: str, disallowed: tuple[str, ...]) -> str | None:
    """The X-Robots-Tag directive that opts this image out, if any. A value is either
    `noai, noindex` (everyone) or `agent: noai` (only that agent)."""
    for value in values:
        agent, sep, directives = value.partition(":")
        agent, directives = (agent.strip().lower(), directives) if sep else ("", value)
        if agent not in ("", user_agent_token, "*"):
            continue
        for directive in (d.strip().lower() for d in directives.split(",")):
            if directive in disallowed:
                return directive
    return None


class Fetcher:
    """One aiohttp session for the whole run; open it inside the event loop (`async with`)."""

    def __init__(self, config: DownloadConfig):
        self.config = config

    async def __aenter__(self) -> Fetcher:
        cfg = self.config
        connector = SafeConnector(allow_private=cfg.allow_private_network, limit=cfg.concurrency,
                                  limit_per_host=cfg.per_host_concurrency, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": cfg.user_agent},
                                             timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True,
                                             trust_env=False)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def fetch(self, url: str | None) -> FetchResult:
        """Fetch with retries on transient failures (exponential backoff, Retry-After honoured up
        to the timeout); the last result is returned."""
        cfg = self.config
        for attempt in range(cfg.retries + 1):
            result = await self.fetch_once(url)
            result.attempts = attempt + 1
            retry = result.outcome in (oc.CONNECTION_ERROR, oc.TRUNCATED) or (
                result.outcome == oc.HTTP_ERROR and result.http_status in RETRY_HTTP)
            if not retry or attempt == cfg.retries:
                break
            delay = result.retry_after if result.retry_after is not None else cfg.retry_backoff * 2**attempt
            await asyncio.sleep(min(delay, cfg.timeout) * (1 + 0.1 * random.random()))
        return result

    async def fetch_once(self, url: str | None) -> FetchResult:
        try:
            return await asyncio.wait_for(self._follow(url), timeout=self.config.timeout)
        except asyncio.TimeoutError:
            return FetchResult(oc.TIMEOUT, error=f"no complete response within {self.config.timeout:g}s")

    def _target(self, url: str | None) -> URL | str:
        """The URL as the connection will use it (yarl: IDNA, lower case, no percent
        tricks left for later), or why it must not be fetched."""
        url = url.strip() if url else url  # spaces around a URL in a list are no part of it
        if not url:
            return "no URL"
        try:
            target = URL(url)
            scheme, host = target.scheme.lower(), target.raw_host
        except ValueError as exc:  # UnicodeError (bad IDNA) included
            return f"unparsable URL: {exc}"
        if scheme not in ("http", "https"):
            return f"scheme {target.scheme or '(none)'!r} is not http or https"
        if not host:
            return "URL has no host"
        return target

    async def _follow(self, url: str | None) -> FetchResult:
        current = url
        for _hop in range(self.config.max_redirects + 1):
            target = self._target(current)
            if isinstance(target, str):
                return FetchResult(oc.BAD_URL, error=target)
            if not self.config.allow_private_network:
                # The connector refuses these too (SafeConnector); refusing here names the host.
                reason = host_refused(target.raw_host)
                if reason:
                    return FetchResult(oc.BLOCKED_ADDRESS, error=reason)
            try:
                async with self.session.get(target, allow_redirects=False) as response:
                    if response.status in REDIRECTS:
                        location = response.headers.get("Location")
                        if not location:
                            return FetchResult(oc.HTTP_ERROR, http_status=response.status,
                                               error=f"HTTP {response.status} without Location")
                        current = urljoin(str(target), location)
                        continue
                    return await self._read(response)
            except (aiohttp.ClientError, OSError) as exc:
                blocked = _blocked_cause(exc)
                if blocked is not None:
                    return FetchResult(oc.BLOCKED_ADDRESS, error=str(blocked))
                if isinstance(exc, aiohttp.ClientPayloadError):
                    return FetchResult(oc.TRUNCATED, http_status=200, error=f"body cut short: {exc}")
                if isinstance(exc, aiohttp.InvalidURL):
                    return FetchResult(oc.BAD_URL, error=f"invalid URL: {exc}")
                return FetchResult(oc.CONNECTION_ERROR, error=f"{type(exc).__name__}: {exc}")
        return FetchResult(oc.TOO_MANY_REDIRECTS, error=f"more than {self.config.max_redirects} redirects")

    async def _read(self, response: aiohttp.ClientResponse) -> FetchResult:
        cfg = self.config
        status = response.status
        if status != 200:
            return FetchResult(oc.HTTP_ERROR, http_status=status,
                               error=f"HTTP {status} {response.reason or ''}".strip(),
                               retry_after=_seconds(response.headers.get("Retry-After")))
        tags = response.headers.getall("X-Robots-Tag", [])
        directive = robots_opt_out(tags, cfg.user_agent_token, cfg.disallowed_directives)
        if directive:
            return FetchResult(oc.OPTED_OUT, http_status=status,
                               error=f"X-Robots-Tag: {directive} opts this image out")
        limit, length = f"over the {cfg.max_bytes}-byte limit", response.content_length
        if length is not None and length > cfg.max_bytes:
            return FetchResult(oc.TOO_LARGE, http_status=status, error=f"Content-Length {length} {limit}")
        body = bytearray()
        async for chunk in response.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > cfg.max_bytes:
                return FetchResult(oc.TOO_LARGE, http_status=status, error=f"body {limit}")
        return FetchResult(oc.OK, data=bytes(body), http_status=status, content_type=response.content_type)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
