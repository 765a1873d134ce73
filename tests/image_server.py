"""A loopback HTTP server with real images and every fault a downloader meets (aiohttp, in a thread)."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp import web

from .conftest import image_bytes
from .loopback import LoopbackApp

IMAGES = {f"{i}.jpg": image_bytes(60 + 10 * i, 40 + 5 * i, seed=i) for i in range(8)}
IMAGES["big.png"] = image_bytes(900, 300, fmt="PNG", seed=99)


class ImageServer(LoopbackApp):
    """Paths: /img/{name} (an image), /404, /flaky429/{n} (429 once, then the image), /500,
    /slow (headers, then a body that trickles), /truncated (Content-Length longer than the body),
    /html (a web page), /loop (redirects to itself), /redirect (to /img/0.jpg), /huge (a large
    body), /optout (X-Robots-Tag: noai), /optout-other (X-Robots-Tag: otherbot: noai),
    /maybe/{n} (503 while `down`), /delay/{name} (an image after 0.15 s)."""

    def __init__(self, huge_bytes: int = 400_000, slow_seconds: float = 5.0):
        self.hits: Counter = Counter()
        self.huge_bytes = huge_bytes
        self.slow_seconds = slow_seconds
        self.down = True  # /maybe answers 503 while down

    async def _image(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        name = request.match_info["name"]
        if name not in IMAGES:
            return web.Response(status=404)
        kind = "image/png" if name.endswith(".png") else "image/jpeg"
        return web.Response(body=IMAGES[name], content_type=kind)

    async def _delayed(self, request: web.Request) -> web.Response:
        await asyncio.sleep(0.15)
        return await self._image(request)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        if path == "/404":
            return web.Response(status=404, text="not here")
        if path.startswith("/flaky429/"):
            if self.hits[path] == 1:
                return web.Response(status=429, text="slow down", headers={"Retry-After": "0"})
            return web.Response(body=IMAGES["1.jpg"], content_type="image/jpeg")
        if path.startswith("/maybe/"):
            if self.down:
                return web.Response(status=503, text="maintenance")
            return web.Response(body=IMAGES["5.jpg"], content_type="image/jpeg")
        if path == "/500":
            return web.Response(status=500, text="broken")
        if path == "/slow":
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            await response.prepare(request)
            for _ in range(50):
                await response.write(b"\xff")
                await asyncio.sleep(self.slow_seconds / 50)
            return response
        if path == "/truncated":
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": "10000"})
            await response.prepare(request)
            await response.write(IMAGES["2.jpg"][:500])
            request.transport.close()
            return response
        if path == "/html":
            return web.Response(text="<html><body>hello</body></html>", content_type="text/html")
        if path == "/loop":
            raise web.HTTPFound("/loop")
        if path == "/redirect":
            raise web.HTTPFound("/img/0.jpg")
        if path == "/huge":
            return web.Response(body=b"\xff" * self.huge_bytes, content_type="image/jpeg")
        if path == "/optout":
            return web.Response(
                body=IMAGES["3.jpg"], content_type="image/jpeg", headers={"X-Robots-Tag": "noai"}
            )
        if path == "/optout-other":
            return web.Response(
                body=IMAGES["4.jpg"],
                content_type="image/jpeg",
                headers={"X-Robots-Tag": "otherbot: noai, noindex"},
            )
        return web.Response(status=404)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/img/{name}", self._image)
        app.router.add_get("/delay/{name}", self._delayed)
        app.router.add_get("/{tail:.*}", self._route)
