"""The OpenAI-compatible server engine (`--engine openai --endpoint URL [URL...]`): one
chat-completions request per image, `concurrency` in flight over all endpoints (the least busy
first), retried with backoff (Retry-After honoured) on timeouts, connection errors, 429 and 5xx;
a request that still fails is that row's caption_error. Error messages are stored and logged,
so they go through `redact` first (API key, endpoint credentials, token-like strings)."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import random
import threading
from urllib.parse import urlsplit, urlunsplit

from ..config import CaptionConfig
from ..passes import Decoding
from ..redact import mask_secrets, redact, url_secrets
from .base import Engine, Generation, Preparer

log = logging.getLogger(__name__)

RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


def chat_completions_url(endpoint: str) -> str:
    """Accept http://host:port, http://host:port/v1 or the full .../chat/completions URL; a
    query string (Azure's ?api-version=...) stays after the path."""
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = (path if path.endswith("/v1") else path + "/v1") + "/chat/completions"
    return urlunsplit(parts._replace(path=path))


def image_data_url(image, quality: int = 95) -> str:
    """The decoded RGB image as a JPEG data URL (the format every server decodes)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIPreparer(Preparer):
    """Chat messages with the image inlined; built in loader workers (JPEG encoding is CPU work).
    The server applies the chat template, so `render` keeps the instruction as it is."""

    def prepare(self, images: list, prompts: list[str]) -> list[list[dict]]:
        return [[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(i)}},
                                              {"type": "text", "text": prompt}]}]
                for i, prompt in zip(images, prompts, strict=True)]


class _RequestFailed(Exception):
    def __init__(self, message: str, retry: bool, wait: float | None = None):
        super().__init__(message)
        self.retry = retry
        self.wait = wait


class OpenAICaptioner(Engine):
    loads_weights = False  # --model names what the server serves

    def __init__(self, config: CaptionConfig):
        if not config.server.endpoints:
            raise ValueError("--engine openai needs at least one --endpoint URL")
        super().__init__(config)
        self.server = config.server
        self.device = "remote"
        self.preparer = OpenAIPreparer()
        self.batch_size = config.batch_size or 32
        # Enough batches in flight to keep `concurrency` requests busy, plus one being prepared.
        self.batches_in_flight = max(1, -(-config.server.concurrency // self.batch_size)) + 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._api_key: str | None = None  # read in setup(), in the process that sends requests
        self._secrets = [v for e in config.server.endpoints for v in url_secrets(e)]

    def redact(self, text: str | None) -> str | None:
        """`text` without this client's secrets or token-like strings: for every message shown."""
        return redact(text, self._secrets)

    # one event loop thread and one HTTP session serve every batch
    def setup(self) -> None:
        self._api_key = os.environ.get(self.server.api_key_env) if self.server.api_key_env else None
        self._secrets.append(self._api_key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="recap-openai", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()
        self.ready = True

    async def _open(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.server.request_timeout),
            connector=aiohttp.TCPConnector(limit=self.server.concurrency),
        )
        self._slots = asyncio.Semaphore(self.server.concurrency)
        self._urls = [chat_completions_url(e) for e in self.server.endpoints]
        self._outstanding = dict.fromkeys(self._urls, 0)
        # An endpoint with credentials in its URL authenticates with them (aiohttp sends basic
        # auth); the API key goes to the others (aiohttp refuses both on one request).
        self._headers = {
            u: {"Authorization": f"Bearer {self._api_key}"} if self._api_key and not url_secrets(u) else {}
            for u in self._urls
        }

    def teardown(self) -> None:
        """Close the HTTP session and stop the event loop thread."""
        self.ready = False
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop = None

    close = teardown

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.teardown()
        except Exception:
            pass

    def generate(self, inputs: list[list[dict]], decoding: Decoding | None = None) -> list[Generation]:
        """Thread-safe: several pipeline threads may wait on batches at once."""
        decoding = self.decoding(decoding)
        seed = decoding.seed
        requests = [self._body(messages, decoding, None if seed is None else seed + i)
                    for i, messages in enumerate(inputs)]
        future = asyncio.run_coroutine_threadsafe(self._all(requests), self._loop)
        return future.result()

    def _body(self, messages: list[dict], decoding: Decoding, seed: int | None) -> dict:
        body = {"model": self.config.model, "messages": messages, "max_tokens": decoding.max_new_tokens}
        if decoding.sample:
            body.update(temperature=1.0, top_k=decoding.top_k)
            if seed is not None:
                body["seed"] = seed
        else:
            body["temperature"] = 0.0
        return body

    async def _all(self, bodies: list[dict]) -> list[Generation]:
        return list(await asyncio.gather(*(self._one(b) for b in bodies)))

    async def _one(self, body: dict) -> Generation:
        attempts = self.server.retries + 1
        last_error = ""
        for attempt in range(attempts):
            url = min(self._urls, key=lambda u: (self._outstanding[u], random.random()))
            try:
                async with self._slots:
                    self._outstanding[url] += 1
                    try:
                        return await self._post(url, body)
                    finally:
                        self._outstanding[url] -= 1
            except _RequestFailed as exc:
                last_error = self.redact(str(exc))
                if not exc.retry or attempt == attempts - 1:
                    break
                delay = exc.wait if exc.wait is not None else self.server.retry_backoff * 2**attempt
                log.info("%s; retry %d/%d in %.2fs", last_error, attempt + 1, attempts - 1, delay)
                await asyncio.sleep(delay * (1 + 0.1 * random.random()))
        return Generation(text=None, num_tokens=0, truncated=False,
                          error=f"request failed after {attempt + 1} attempt(s): {last_error}")

    async def _post(self, url: str, body: dict) -> Generation:
        import aiohttp

        shown = self.redact(url)  # messages name the endpoint without its credentials
        try:
            async with self._session.post(url, json=body, headers=self._headers[url]) as response:
                if response.status != 200:
                    # Masked before it is cut short, so no part of an echoed key survives.
                    text = self.redact(await response.text(errors="replace"))[:200]
                    retry_after = _seconds(response.headers.get("Retry-After"))
                    raise _RequestFailed(f"{shown}: HTTP {response.status} {text}",
                                         retry=response.status in RETRY_STATUSES, wait=retry_after)
                try:
                    reply = await response.json(content_type=None)
                except ValueError as exc:  # the body was not JSON
                    raise _RequestFailed(f"{shown}: reply is not JSON: {exc}", retry=True) from exc
        except asyncio.TimeoutError as exc:
            message = f"{shown}: no reply within {self.server.request_timeout}s"
            raise _RequestFailed(message, retry=True) from exc
        except aiohttp.ClientError as exc:
            raise _RequestFailed(f"{shown}: {type(exc).__name__}: {exc}", retry=True) from exc
        generation = _parse_reply(shown, reply)
        generation.text = mask_secrets(generation.text, self._secrets)  # a server that echoes the key
        return generation


def _parse_reply(url: str, reply: dict) -> Generation:
    try:
        choice = reply["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise _RequestFailed(f"{url}: reply has no choices[0].message.content", retry=False) from exc
    usage = reply.get("usage") or {}
    return Generation(text=(text or "").strip(), num_tokens=int(usage.get("completion_tokens") or 0),
                      truncated=choice.get("finish_reason") == "length")


def _seconds(value: str | None) -> float | None:
    try:
        return min(60.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class OpenAITextPreparer(OpenAIPreparer):
    """A text-only pass's chat messages: the instruction alone (the server applies the template)."""

    def prepare_text(self, prompts: list[str]) -> list[list[dict]]:
        return [[{"role": "user", "content": prompt}] for prompt in prompts]


class OpenAITextGenerator(OpenAICaptioner):
    """A text-only pass's LLM behind an OpenAI-compatible server: the same requests, retries and
    redaction as the captioner, without an image."""

    def __init__(self, config: CaptionConfig):
        if not config.server.endpoints:
            raise ValueError(f"a text-only pass on engine openai (model {config.model}) needs a server: "
                             "give it endpoint: URL, or the run --endpoint URL")
        super().__init__(config)
        self.preparer = OpenAITextPreparer()


ENGINE = OpenAICaptioner
TEXT_ENGINE = OpenAITextGenerator
