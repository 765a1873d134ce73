"""Serving the `recap view` app with uvicorn: the socket bound first (a port in use is one line,
exit 2), loopback unless asked otherwise (and a warning then)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable

from ..spine.errors import RecaptionError
from .app import LOOPBACK_NAMES, make_app

log = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765


class PortError(RecaptionError, OSError):
    """The address cannot be listened on (a port in use, a host that is not this machine's)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); PortError in one line naming the fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Answers go out at once (accepted connections inherit it): without it a keep-alive
        # request waits out the browser's delayed ACK, ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortError(f"port {port} on {host} is in use (another recap view?): pass another --port, "
                            "or --port 0 for any free one") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
            raise PortError(f"--host {host}: not an address of this machine ({exc.strerror or exc}); "
                            "use 127.0.0.1") from None
        if exc.errno == errno.EACCES:
            raise PortError(f"port {port}: not allowed for this user (ports below 1024 need root); "
                            "pass a --port of 1024 or above") from None
        raise PortError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def serve(output: str, images: list[str] | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the app over `output` at http://host:port/ until interrupted (Ctrl-C, SIGTERM).
    `on_ready(url)` is called once the socket listens."""
    import uvicorn

    hosts = list(dict.fromkeys([*LOOPBACK_NAMES, host.strip("[]")]))  # 127.0.0.2 is loopback too
    if not is_loopback(host):
        log.warning("--host %s: the captions and images are served to anyone who can reach this machine "
                    "on that address (no login); the default, 127.0.0.1, serves only this machine", host)
        hosts = ["*"] if host in ("0.0.0.0", "::", "[::]") else hosts
    app = make_app(output, images, hosts=hosts)  # not caption output: one line, before any socket
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    url = f"http://{shown}:{bound}/"
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    if on_ready:
        on_ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
