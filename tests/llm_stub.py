"""A real OpenAI-compatible HTTP server for tests, misbehaving on request.

It listens on 127.0.0.1 on a free port (bound to port 0, so no race) and
serves ``POST /v1/chat/completions`` (``stream: true`` → SSE chunks then
``data: [DONE]``; ``stream: false`` → one JSON) and ``GET /v1/models``.

Two ways to run it:

    with serve_stub(mode="ok") as stub:          # sync: its own loop in a thread
        stub.url        # "http://127.0.0.1:PORT/v1"
        stub.calls      # chat completion requests received so far
        stub.mode = "429"                        # may change between requests

    async with async_stub(mode="hang") as stub:  # in the running event loop
        ...

Modes (``stub.mode``, read when each request arrives):

    ok       streams ``reply`` word by word (the default reply cites [1])
    429      HTTP 429 with ``Retry-After: {retry_after}`` (any string, even absurd)
    500      HTTP 500 with a JSON error body
    401      HTTP 401 whose body echoes the Authorization header (a hostile server
             that reflects the key: the client must not repeat it)
    hang     accepts the request, never sends a byte (released on close)
    slow     one word every ``slow_s`` seconds
    garbage  HTTP 200 text/event-stream with a line that is not JSON, then
             an enormous line with no newline
    huge     one ``data:`` line of ``huge_bytes`` bytes that never ends
    endless  valid tokens forever, whatever ``max_tokens`` says
    cut      ``cut_after`` words, then the connection is closed mid-stream

``stub.requests`` keeps each chat request's JSON body and its Authorization
header (tests check that the key was sent, and only where it should go).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_REPLY = "Sporemind keeps what its swarm was taught on the devices of its members [1]."
MODES = ("ok", "429", "500", "401", "hang", "slow", "garbage", "huge", "endless", "cut")
STUB_MODEL = "stub-model"


@dataclass
class StubServer:
    """The stub's knobs and what it saw; attributes may change while it runs."""

    mode: str = "ok"
    reply: str = DEFAULT_REPLY
    retry_after: str | None = "1"
    slow_s: float = 1.0
    cut_after: int = 3
    huge_bytes: int = 4 * 1024 * 1024
    model: str = STUB_MODEL
    url: str = ""
    calls: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    _release: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    # -- handlers ---------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "owned_by": "stub"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        mode = self.mode
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        self.requests.append({"body": body,
                              "authorization": request.headers.get("Authorization", "")})
        if mode not in MODES:
            raise web.HTTPInternalServerError(text=f"unknown stub mode {mode!r}")
        if mode == "429":
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            return web.json_response({"error": {"message": "rate limited", "type": "rate"}},
                                     status=429, headers=headers)
        if mode == "500":
            return web.json_response({"error": {"message": "the stub broke"}}, status=500)
        if mode == "401":
            auth = request.headers.get("Authorization", "")
            return web.json_response({"error": {"message": f"bad key: {auth}"}}, status=401)
        if mode == "hang":
            assert self._release is not None
            await self._release.wait()
            raise web.HTTPServiceUnavailable()
        words = re.findall(r"\s*\S+", self.reply)
        max_tokens = body.get("max_tokens") if isinstance(body, dict) else None
        if isinstance(max_tokens, int) and max_tokens > 0 and mode != "endless":
            words = words[:max_tokens]
        if isinstance(body, dict) and body.get("stream") is False:
            return web.json_response(_completion(self.model, "".join(words)))
        return await self._sse(request, mode, words)

    async def _sse(self, request: web.Request, mode: str, words: list[str]
                   ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):  # the client went away (bounds, deadlines)
            await self._body(request, resp, mode, words)
        return resp

    async def _body(self, request: web.Request, resp: web.StreamResponse, mode: str,
                    words: list[str]) -> None:
        if mode == "garbage":
            await resp.write(b"data: {this is not json\n\n")
            await resp.write(b"data: " + b"\xff" * (self.huge_bytes // 2) + b"x" * 1024)
            await self._end(resp)
            return
        if mode == "huge":
            await resp.write(b'data: {"choices":[{"delta":{"content":"')
            chunk = b"A" * 65536
            for _ in range(max(1, self.huge_bytes // len(chunk))):
                await resp.write(chunk)
            await self._end(resp)
            return
        await resp.write(_event(_chunk(self.model, {"role": "assistant", "content": ""})))
        if mode == "endless":
            n = 0
            while True:  # ends when the client goes away (write raises)
                n += 1
                await resp.write(_event(_chunk(self.model, {"content": f" w{n}"})))
                if n % 64 == 0:
                    await asyncio.sleep(0)
        for i, word in enumerate(words):
            if mode == "cut" and i == self.cut_after:
                assert request.transport is not None
                request.transport.close()  # mid-body: the client sees an incomplete payload
                return
            if mode == "slow" and i:
                assert self._release is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), self.slow_s)
            await resp.write(_event(_chunk(self.model, {"content": word})))
        await resp.write(_event(_chunk(self.model, {}, finish="stop")))
        await resp.write(b"data: [DONE]\n\n")
        await self._end(resp)

    async def _end(self, resp: web.StreamResponse) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()

    # -- lifecycle ----------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _start(self) -> web.AppRunner:
        self._release = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1"
        return runner

    async def _stop(self, runner: web.AppRunner) -> None:
        if self._release is not None:
            self._release.set()
        await runner.cleanup()


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _completion(model: str, text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": text}}]}


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


@contextlib.asynccontextmanager
async def async_stub(mode: str = "ok", reply: str = DEFAULT_REPLY, **knobs: Any
                     ) -> AsyncIterator[StubServer]:
    """The stub in the running event loop (for async tests)."""
    stub = StubServer(mode=mode, reply=reply, **knobs)
    runner = await stub._start()
    try:
        yield stub
    finally:
        await stub._stop(runner)


@contextlib.contextmanager
def serve_stub(mode: str = "ok", reply: str = DEFAULT_REPLY, **knobs: Any
               ) -> Iterator[StubServer]:
    """The stub on its own event loop in a daemon thread (for sync tests and for
    async tests that must not share their loop with the server)."""
    stub = StubServer(mode=mode, reply=reply, **knobs)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="llm-stub", daemon=True)
    thread.start()
    try:
        runner = asyncio.run_coroutine_threadsafe(stub._start(), loop).result(10)
        try:
            yield stub
        finally:
            asyncio.run_coroutine_threadsafe(stub._stop(runner), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
