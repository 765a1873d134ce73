"""The one address policy for image URLs and their redirects: only globally routable unicast
(IPv4 `is_global`; IPv6 also inside 2000::/3). An IPv6 address that carries an IPv4 one (mapped,
translated, compatible, NAT64, 6to4, Teredo) is judged by the IPv4 inside too: a packet may end
up there. Endpoints the user names (judge, openai) are the user's choice, not checked here."""

from __future__ import annotations

import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_HINT = "--allow-private-network allows it"
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: public IPv4 behind it
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use: never public
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT IPv4-translated
_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible (:: and ::1 are in it)
# The IANA special-purpose registries, where Python's `is_global` lags them (it was corrected in
# 3.11.10 / 3.12.4 / 3.13): not reachable though older Pythons say so, and reachable though they
# say not.
_NOT_GLOBAL = (ipaddress.ip_network("3fff::/20"),  # RFC 9637 documentation
               ipaddress.ip_network("192.0.0.0/24"))  # IETF protocol assignments (but .9, .10 below)
_GLOBAL = tuple(ipaddress.ip_network(n) for n in (
    "192.0.0.9/32", "192.0.0.10/32",  # PCP and TURN anycast
    "2001:1::1/128", "2001:1::2/128",  # PCP and TURN anycast
    "2001:3::/32",  # AMT
    "2001:4:112::/48",  # AS112-v6
))
_NUMERIC_HOST = re.compile(r"[0-9A-Fa-fXx.]+")


def parse_address(ip: str | IPAddress) -> IPAddress:
    """An address from its text (brackets and a %zone allowed)."""
    return ip if not isinstance(ip, str) else ipaddress.ip_address(ip.strip("[]").split("%", 1)[0])


def embedded_ipv4(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (empty for IPv4 and plain IPv6)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    low32 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    found = [v for v in (addr.ipv4_mapped, addr.sixtofour, *(addr.teredo or ())) if v is not None]
    if addr in _NAT64 or addr in _TRANSLATED or (addr in _COMPATIBLE and int(addr) > 1):
        found.append(low32)
    return found


def _reaches_ipv4(addr: IPAddress) -> bool:
    """Mapped, translated and NAT64 addresses are ways to reach an IPv4 host: that host decides."""
    return isinstance(addr, ipaddress.IPv6Address) and (
        addr.ipv4_mapped is not None or addr in _NAT64 or addr in _TRANSLATED
    )


def address_blocked(ip: str | IPAddress) -> bool:
    """True unless `ip` is a globally routable unicast address (and so is any IPv4 inside it)."""
    addr = parse_address(ip)
    inner = embedded_ipv4(addr)
    if _reaches_ipv4(addr):
        return any(address_blocked(v4) for v4 in inner)
    if any(addr in net for net in _GLOBAL if net.version == addr.version):
        return False
    if any(addr in net for net in _NOT_GLOBAL if net.version == addr.version):
        return True
    if addr.is_multicast or addr.is_unspecified or not addr.is_global:
        return True
    if isinstance(addr, ipaddress.IPv6Address) and (addr not in _GLOBAL_UNICAST or addr in _NAT64_LOCAL):
        return True
    return any(address_blocked(v4) for v4 in inner)


def address_kind(ip: str | IPAddress) -> str:
    """A word for why an address is refused, for messages (of the IPv4 inside, where one is)."""
    addr = parse_address(ip)
    inner = [v4 for v4 in embedded_ipv4(addr) if address_blocked(v4)]
    addr = inner[0] if inner else addr
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "site_local", "reserved"):
        if getattr(addr, f"is_{kind}", False):
            return kind.replace("_", "-")
    return "non-public"


def literal_address(host: str) -> IPAddress | None:
    """The address a host names without DNS, in every spelling the system resolver accepts:
    dotted quads, IPv6 (bracketed or not), and the legacy inet_aton forms (2130706433,
    0177.0.0.1, 0x7f.1, 127.1), with or without a trailing dot. None for a host name."""
    bare = host.strip("[]").split("%", 1)[0]
    bare = bare[:-1] if bare.endswith(".") else bare
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if bare and _NUMERIC_HOST.fullmatch(bare) and bare[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def host_refused(host: str) -> str | None:
    """Why connecting to `host` (as the connection will use it: IDNA / yarl-normalised) is
    refused before any DNS lookup, or None: a non-public address in any spelling, or a
    `localhost` name (RFC 6761: always loopback)."""
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return f"{host} is a loopback name; {ALLOW_HINT}"
    addr = literal_address(host)
    if addr is not None and address_blocked(addr):
        spelled = "" if host.strip("[]") == str(addr) else f" ({addr})"
        return f"{host}{spelled} is a {address_kind(addr)} address; {ALLOW_HINT}"
    return None
