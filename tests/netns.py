"""Run test code in a loopback-only network namespace (`unshare -n`), for the adversarial tests.

Inside, the only interface is `lo`: whatever the code under test does wrong, no packet can leave
the machine, and a test server may listen on every address (`AnyAddressServer`) to notice a
connection to any spelling of any address. Optionally a few "public" addresses are put on `lo`
(so a redirect can start from an address the downloader allows) and /etc/hosts is replaced in
a private mount namespace (DNS names that point inside, without a DNS server).

    @needs_netns
    def test_x():
        result = run_isolated("print(json.dumps(...))", public=["93.184.216.34"])

Where `unshare -n` is not available (no root, no user namespaces, not Linux), tests marked
`needs_netns` are skipped with the reason.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def netns_unavailable() -> str | None:
    """Why `unshare -n` cannot give us an isolated loopback here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (util-linux, iproute2)"
    try:
        probe = subprocess.run(
            ["unshare", "-n", "-m", "sh", "-c", "ip link set lo up && ip -o link show"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -n failed: {exc}"
    if probe.returncode != 0:
        return f"unshare -n -m is not permitted here (needs root or user namespaces): {probe.stderr.strip()}"
    return None


needs_netns = pytest.mark.skipif(
    netns_unavailable() is not None,
    reason=f"adversarial network tests run in a loopback-only namespace: {netns_unavailable()}",
)


def run_isolated(
    code: str,
    *,
    public: tuple[str, ...] | list[str] = (),
    hosts: dict[str, str] | None = None,
    timeout: float = 120,
) -> dict:
    """Run Python `code` (dedented) in a fresh network namespace with only `lo` up, the
    `public` addresses added to it, and `hosts` (name -> address) as /etc/hosts. The code runs
    from the repository root (`tests.*` importable) and prints one JSON object as its last line
    of stdout, which is returned."""
    setup = ["set -e", "ip link set lo up"]
    setup += [f"ip addr add {address}/{128 if ':' in address else 32} dev lo" for address in public]
    with tempfile.TemporaryDirectory(prefix="recap-netns-") as tmp:
        if hosts:
            hosts_file = Path(tmp) / "hosts"
            hosts_file.write_text("".join(f"{address} {name}\n" for name, address in hosts.items()))
            setup.append(f"mount --bind {hosts_file} /etc/hosts")  # private mount namespace (-m)
        setup.append('exec "$@"')
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env["RECAP_IN_NETNS"] = "1"
        result = subprocess.run(
            [
                "unshare",
                "-n",
                "-m",
                "sh",
                "-c",
                "; ".join(setup),
                "sh",
                sys.executable,
                "-c",
                textwrap.dedent(code),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if result.returncode != 0:
        raise AssertionError(f"isolated run failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise AssertionError(f"isolated run printed nothing:\n{result.stderr}")
    return json.loads(lines[-1])


def only_loopback() -> bool:
    """True inside an isolated namespace: `lo` is the only interface."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def any_address_server():
    """An HTTP server listening on every address of the namespace (IPv4 and IPv6, one port),
    recording each request's path in `.hits`; refuses to start outside an isolated namespace.

    Paths: /img/{name} (an image), /redirect?to=URL (302 to URL), anything else 200 "hit"."""
    from aiohttp import web

    from .image_server import IMAGES
    from .loopback import LoopbackApp

    class AnyAddressServer(LoopbackApp):
        def __init__(self):
            if not only_loopback():
                raise RuntimeError("AnyAddressServer listens on every address: run it only in run_isolated")
            self.hits: Counter = Counter()

        async def _start(self) -> None:
            app = web.Application()
            self.routes(app)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too, mapped
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::", 0))
            await web.SockSite(self._runner, sock).start()
            self.port = sock.getsockname()[1]

        async def _handle(self, request: web.Request) -> web.StreamResponse:
            self.hits[request.path] += 1
            if request.path == "/redirect":  # Location exactly as given (no yarl normalisation)
                return web.Response(status=302, headers={"Location": request.query["to"]})
            name = request.path.rsplit("/", 1)[-1]
            if request.path.startswith("/img/") and name in IMAGES:
                return web.Response(body=IMAGES[name], content_type="image/jpeg")
            return web.Response(text="hit")

        def routes(self, app: web.Application) -> None:
            app.router.add_get("/{tail:.*}", self._handle)

    return AnyAddressServer()
