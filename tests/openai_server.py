"""A loopback OpenAI-compatible chat-completions server for tests (aiohttp, in a thread).

`behaviour(body, state) -> (status, json_or_text, headers)` decides each reply, so a test can
script faults: 429 then 200, 5xx, slow replies, malformed bodies.
"""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import dataclass, field

from aiohttp import web
from PIL import Image

from .loopback import LoopbackApp


@dataclass
class ServerState:
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    counter: int = 0


def image_of(body: dict) -> Image.Image:
    for part in body["messages"][0]["content"]:
        if part["type"] == "image_url":
            url = part["image_url"]["url"]
            return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    raise ValueError("no image in request")


def prompt_of(body: dict) -> str:
    return next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")


def describe(body: dict) -> str:
    """A deterministic 'caption' that proves which image and prompt the server got."""
    img = image_of(body)
    return f"an image of {img.width} by {img.height} pixels ({prompt_of(body)[:24]})"


def completion(text: str, finish_reason: str = "stop", tokens: int = 7) -> dict:
    return {
        "id": "cmpl-test", "object": "chat.completion", "model": "test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 600, "completion_tokens": tokens, "total_tokens": 600 + tokens},
    }


async def default_behaviour(body: dict, state: ServerState):
    await asyncio.sleep(0.01)  # long enough for requests to overlap
    return 200, completion(describe(body)), {}


class LoopbackServer(LoopbackApp):
    def __init__(self, behaviour=default_behaviour):
        self.behaviour = behaviour
        self.state = ServerState()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        body = await request.json()
        state.requests.append(body)
        state.headers.append(dict(request.headers))
        state.counter += 1
        state.active += 1
        state.max_active = max(state.max_active, state.active)
        try:
            status, payload, headers = await self.behaviour(body, state)
        finally:
            state.active -= 1
        if isinstance(payload, dict):
            return web.json_response(payload, status=status, headers=headers)
        return web.Response(text=payload, status=status, headers=headers)

    client_max_size = 64 * 1024 * 1024

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._handle)
