"""Fetch one URL safely: http(s) only, no private addresses, bounded time, size and redirects.

Every way a fetch can end is a `FetchResult` with an outcome, never an exception. The time
bound covers DNS, connect, every redirect hop and the whole body (asyncio.wait_for around it
all), so no URL can hang a shard; retries (429, 5xx, connection errors, truncated bodies) back
off exponentially and honour Retry-After up to the timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from . import outcomes as oc
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
    """Raised by the resolver: the host resolves to an address we must not connect to."""


def address_blocked(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    )


class SafeResolver(AbstractResolver):
    """DNS through aiohttp's threaded resolver, refusing non-public addresses. Checking the
    resolved addresses (not the host name) also stops DNS names that point inside."""

    def __init__(self, allow_private: bool):
        self._inner = aiohttp.ThreadedResolver()
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        infos = await self._inner.resolve(host, port, family)
        if not self.allow_private:
            for info in infos:
                if address_blocked(info["host"]):
                    raise BlockedAddress(f"{host} resolves to {info['host']}, a non-public address")
        return infos

    async def close(self) -> None:
        await self._inner.close()


def robots_opt_out(values: list[str], user_agent_token: str, disallowed: tuple[str, ...]) -> str | None:
    """The X-Robots-Tag directive that opts this image out, if any. A value is either
    `noai, noindex` (everyone) or `agent: noai` (only that agent)."""
    for value in values:
        agent, sep, directives = value.partition(":")
        if not sep:
            agent, directives = "", value
        agent = agent.strip().lower()
        if agent and agent not in (user_agent_token, "*"):
            continue
        for directive in directives.split(","):
            if directive.strip().lower() in disallowed:
                return directive.strip().lower()
    return None


class Fetcher:
    """One aiohttp session for the whole run; open it inside the event loop (`async with`)."""

    def __init__(self, config: DownloadConfig):
        self.config = config

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            limit=self.config.concurrency,
            limit_per_host=self.config.per_host_concurrency,
            resolver=SafeResolver(self.config.allow_private_network),
            ttl_dns_cache=300,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self.config.user_agent},
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def fetch(self, url: str | None) -> FetchResult:
        """Fetch with retries on transient failures; the last result is returned."""
        cfg = self.config
        result = FetchResult(oc.BAD_URL, error="no URL")
        for attempt in range(cfg.retries + 1):
            result = await self.fetch_once(url)
            result.attempts = attempt + 1
            retry = result.outcome in (oc.CONNECTION_ERROR, oc.TRUNCATED) or (
                result.outcome == oc.HTTP_ERROR and result.http_status in RETRY_HTTP
            )
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

    def _check_url(self, url: str | None) -> str | None:
        """Why this URL must not be fetched, or None."""
        if not url:
            return "no URL"
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            return f"unparsable URL: {exc}"
        if parts.scheme.lower() not in ("http", "https"):
            return f"scheme {parts.scheme or '(none)'!r} is not http or https"
        if not parts.hostname:
            return "URL has no host"
        return None

    async def _follow(self, url: str | None) -> FetchResult:
        current = url
        for _hop in range(self.config.max_redirects + 1):
            problem = self._check_url(current)
            if problem:
                return FetchResult(oc.BAD_URL, error=problem)
            host = urlsplit(current).hostname
            if not self.config.allow_private_network and _is_ip(host) and address_blocked(host):
                return FetchResult(oc.BLOCKED_ADDRESS, error=f"{host} is a non-public address")
            try:
                async with self.session.get(current, allow_redirects=False) as response:
                    if response.status in REDIRECTS:
                        location = response.headers.get("Location")
                        if not location:
                            return FetchResult(
                                oc.HTTP_ERROR,
                                http_status=response.status,
                                error=f"HTTP {response.status} without Location",
                            )
                        current = urljoin(current, location)
                        continue
                    return await self._read(response)
            except aiohttp.ClientConnectorError as exc:
                if isinstance(getattr(exc, "os_error", None), BlockedAddress) or isinstance(
                    exc.__cause__, BlockedAddress
                ):
                    return FetchResult(oc.BLOCKED_ADDRESS, error=str(exc.os_error or exc.__cause__))
                return FetchResult(oc.CONNECTION_ERROR, error=f"{type(exc).__name__}: {exc}")
            except aiohttp.ClientPayloadError as exc:
                return FetchResult(oc.TRUNCATED, http_status=200, error=f"body cut short: {exc}")
            except aiohttp.InvalidURL as exc:
                return FetchResult(oc.BAD_URL, error=f"invalid URL: {exc}")
            except (aiohttp.ClientError, OSError) as exc:
                return FetchResult(oc.CONNECTION_ERROR, error=f"{type(exc).__name__}: {exc}")
        return FetchResult(oc.TOO_MANY_REDIRECTS, error=f"more than {self.config.max_redirects} redirects")

    async def _read(self, response: aiohttp.ClientResponse) -> FetchResult:
        cfg = self.config
        status = response.status
        if status != 200:
            return FetchResult(
                oc.HTTP_ERROR,
                http_status=status,
                error=f"HTTP {status} {response.reason or ''}".strip(),
                retry_after=_seconds(response.headers.get("Retry-After")),
            )
        if cfg.disallowed_directives:
            directive = robots_opt_out(
                response.headers.getall("X-Robots-Tag", []), cfg.user_agent_token, cfg.disallowed_directives
            )
            if directive:
                return FetchResult(
                    oc.OPTED_OUT, http_status=status, error=f"X-Robots-Tag: {directive} opts this image out"
                )
        if response.content_length is not None and response.content_length > cfg.max_bytes:
            return FetchResult(
                oc.TOO_LARGE,
                http_status=status,
                error=f"Content-Length {response.content_length} over the {cfg.max_bytes}-byte limit",
            )
        body = bytearray()
        async for chunk in response.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > cfg.max_bytes:
                return FetchResult(
                    oc.TOO_LARGE, http_status=status, error=f"body over the {cfg.max_bytes}-byte limit"
                )
        return FetchResult(oc.OK, data=bytes(body), http_status=status, content_type=response.content_type)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
