"""Language-model providers: the embedded generator and OpenAI-compatible endpoints,
tried in turn by a `Chain` (the embedded one is p2pnode.embedded).

    GenerationError (SporeError)
     ├── NoProvider        every provider failed before its first token, or is
     │                     cooling down / unavailable; the message says why, per provider
     ├── GenerationFailed  the provider that was answering failed after its first token
     │                     (the answer is never spliced from two providers)
     └── ProviderError     one provider failed (internal to the chain; carries Retry-After)

A `Provider` streams text pieces for a list of chat messages. The `Chain`
tries its providers in the configured order; a provider that fails before
its first token (HTTP 429 or 5xx, no first token within its deadline,
connection refused, a malformed or oversized stream) is put in cooldown —
Retry-After respected within [MIN_COOLDOWN_S, its max cooldown], else its
cooldown doubled on each failure in a row, capped — and the next one is
tried. A provider that answers again leaves cooldown at once.

Everything read from an endpoint is bounded (line length, bytes, pieces).
API keys never appear in logs, in `status()` or in error messages: errors are
built from our own words plus a sanitised excerpt with the key removed.

Configuration (`[generate]` in config.toml, parsed by p2pnode.config):

    [generate]
    providers = ["my-ollama", "embedded"]  # chain order; default: the [generate.NAME]
                                           # tables in file order, then "embedded" when
                                           # the `generate` extra is installed; [] = off
    threads = 1                            # embedded generator threads (1..64; default 1)
    ungrounded = false                     # may answer without memories (marked)
    [generate.my-ollama]                   # any name but "embedded": [A-Za-z0-9_-]{1,32}
    url = "http://127.0.0.1:11434/v1"      # http(s), no user:password@, no ?query
    model = "llama3.2"
    api_key_env = "OLLAMA_KEY"             # the key's environment variable, or
    # api_key = "..."                      # the key itself: then config.toml must not be
                                           # readable by group or others (chmod 600)
    first_token_s = 10                     # deadline to the first token
    deadline_s = 60                        # deadline to the last token
    cooldown_s = 60                        # first cooldown after a failure (doubles, ≤ 15 min)
    [generate.embedded]                    # optional: deadlines of the embedded generator
    first_token_s = 30

`SPORE_GENERATE` = "off" | "embedded" | a comma list of configured names
overrides `providers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from p2pnode.errors import BadRequest, SporeError

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}
ROLES = ("system", "user", "assistant")
THIS_DEVICE = "this device"
MIN_COOLDOWN_S = 1.0
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 64 * 1024
MAX_TOKENS = 4096


@dataclass(frozen=True)
class Piece:
    """A piece of an answer, and who wrote it."""

    provider: str
    model: str
    text: str


class GenerationError(SporeError):
    """Base of the errors of answer generation."""


class NoProvider(GenerationError):
    """No provider could start an answer; the message lists why, per provider."""

    status = 503


class GenerationFailed(GenerationError):
    """The provider that was answering failed after its first token."""

    status = 502


class ProviderError(GenerationError):
    """One provider failed. `reason` is our own words (never a key); `retry_after`
    is what the endpoint asked for, in seconds, unbounded (the chain bounds it)."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Deadlines, cooldowns and the bounds on what is read from a provider."""

    first_token_s: float = 10.0
    deadline_s: float = 60.0
    cooldown_s: float = 60.0
    max_cooldown_s: float = 900.0
    max_line_bytes: int = 64 * 1024
    max_total_bytes: int = 2 * 1024 * 1024
    max_pieces: int = 2 * MAX_TOKENS


class Provider(Protocol):
    """Something that streams an answer. Optional attributes the chain reads:
    `limits: Limits`, `unavailable: str` (why it cannot work at all; "" if it can)
    and `async close()`."""

    name: str
    kind: str
    model: str
    where: str  # where the question text goes: "this device" or the endpoint's origin

    def stream(self, messages: Sequence[Message], max_tokens: int) -> AsyncIterator[str]: ...


@dataclass
class _State:
    until: float = 0.0
    streak: int = 0
    last_error: str = ""
    calls: int = 0
    failures: int = 0
    tokens: int = 0


class Chain:
    """Providers tried in order, with deadlines and cooldowns (see the module doc)."""

    def __init__(self, providers: Sequence[Provider], *,
                 clock: Callable[[], float] = time.monotonic,
                 limits: Limits | None = None) -> None:
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names repeat: {names}")
        self.providers = tuple(providers)
        self._clock = clock
        self._limits = limits or Limits()
        self._state = {p.name: _State() for p in providers}

    def limits(self, provider: Provider) -> Limits:
        found = getattr(provider, "limits", None)
        return found if isinstance(found, Limits) else self._limits

    async def stream(self, messages: Sequence[Message], max_tokens: int = 256
                     ) -> AsyncGenerator[Piece, None]:
        """Pieces of one answer from the first provider that starts one.
        Raises NoProvider, GenerationFailed, BadRequest (messages or max_tokens)."""
        check_messages(messages, max_tokens)
        reasons: list[str] = []
        for provider in self.providers:
            why = self._skip(provider)
            if why:
                reasons.append(f"{provider.name}: {why}")
                continue
            state = self._state[provider.name]
            state.calls += 1
            started = False
            try:
                async with contextlib.aclosing(self._guarded(provider, messages,
                                                             max_tokens)) as texts:
                    async for text in texts:
                        started = True
                        state.tokens += 1
                        yield Piece(provider.name, provider.model, text)
            except ProviderError as exc:
                self._failed(provider, exc)
                if started:
                    raise GenerationFailed(f"{provider.name} ({provider.model}) stopped "
                                           f"mid-answer: {exc.reason}") from None
                reasons.append(f"{provider.name}: {exc.reason}")
                continue
            if started:
                state.streak, state.until = 0, 0.0
                return
            self._failed(provider, ProviderError("returned an empty answer"))
            reasons.append(f"{provider.name}: returned an empty answer")
        raise NoProvider("no language-model provider could answer: " + "; ".join(reasons)
                         if reasons else "no language-model provider is configured")

    async def _guarded(self, provider: Provider, messages: Sequence[Message],
                       max_tokens: int) -> AsyncGenerator[str, None]:
        """The provider's pieces under its deadlines; every failure as ProviderError."""
        limits = self.limits(provider)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.deadline_s
        first = min(loop.time() + limits.first_token_s, deadline)
        pieces = provider.stream(messages, max_tokens)
        started = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline if started else first):
                        text = await anext(pieces)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    what = (f"the answer took over {limits.deadline_s:g} s" if started else
                            f"no first token within {limits.first_token_s:g} s")
                    raise ProviderError(what) from None
                if text:
                    started = True
                    yield text
        finally:
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()

    def _skip(self, provider: Provider) -> str:
        unavailable = str(getattr(provider, "unavailable", "") or "")
        if unavailable:
            return f"unavailable: {unavailable}"
        left = self._state[provider.name].until - self._clock()
        if left > 0:
            return (f"cooling down for {left:.0f} s more after: "
                    f"{self._state[provider.name].last_error}")
        return ""

    def _failed(self, provider: Provider, exc: ProviderError) -> None:
        limits = self.limits(provider)
        state = self._state[provider.name]
        state.failures += 1
        state.streak += 1
        state.last_error = exc.reason
        wait = (limits.cooldown_s * 2.0 ** min(state.streak - 1, 20)
                if exc.retry_after is None else exc.retry_after)
        wait = min(max(wait, MIN_COOLDOWN_S), limits.max_cooldown_s)
        state.until = self._clock() + wait
        log.warning("provider %s failed (%s); cooling down for %.0f s",
                    provider.name, exc.reason, wait)

    def status(self) -> list[dict[str, Any]]:
        """Per provider: name, kind, model, where, state, cooling_s, last_error and
        the counters; never a key."""
        now = self._clock()
        out = []
        for provider in self.providers:
            state = self._state[provider.name]
            unavailable = str(getattr(provider, "unavailable", "") or "")
            cooling = max(0.0, state.until - now)
            out.append({
                "name": provider.name, "kind": provider.kind, "model": provider.model,
                "where": provider.where,
                "state": "unavailable" if unavailable else "cooling" if cooling else "ready",
                "cooling_s": round(cooling, 1),
                "last_error": unavailable or state.last_error,
                "calls": state.calls, "failures": state.failures, "tokens": state.tokens,
            })
        return out

    def where_questions_go(self) -> list[str]:
        """Where a question's text may be sent, in chain order, once each."""
        out: list[str] = []
        for provider in self.providers:
            if not getattr(provider, "unavailable", "") and provider.where not in out:
                out.append(provider.where)
        return out

    async def close(self) -> None:
        for provider in self.providers:
            close = getattr(provider, "close", None)
            if close is not None:
                await close()


def check_messages(messages: Sequence[Message], max_tokens: int) -> None:
    """Raise BadRequest unless `messages` is a short list of {role, content} strings."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) \
            or not 1 <= max_tokens <= MAX_TOKENS:
        raise BadRequest(f"max_tokens must be an integer in 1..{MAX_TOKENS}")
    if not messages or len(messages) > MAX_MESSAGES:
        raise BadRequest(f"a generation needs 1..{MAX_MESSAGES} messages")
    for message in messages:
        if not isinstance(message, dict) or set(message) != {"role", "content"} \
                or message["role"] not in ROLES or not isinstance(message["content"], str):
            raise BadRequest("each message must be {role: system|user|assistant, "
                             "content: string}")
        if len(message["content"]) > MAX_MESSAGE_CHARS:
            raise BadRequest(f"a message is over {MAX_MESSAGE_CHARS} characters")


# -- bounded, key-free error text ----------------------------------------------------------
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with every secret (and anything after 'Bearer ') removed, control
    characters squashed and cut to 200 characters: safe to log and to show."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = re.sub(r"(?i)bearer\s+\S+", "Bearer ***", text)
    return _UNPRINTABLE.sub(" ", text).strip()[:200]


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or an HTTP date,
    `now` being the wall clock); None when absent or unreadable. Not bounded."""
    if not value or len(value) > 64:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    seconds = when.timestamp() - now
    return seconds if math.isfinite(seconds) else None


def origin(url: str) -> str:
    """scheme://host[:port] of a URL (where a question would go)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


# -- OpenAI-compatible endpoints ------------------------------------------------------------
class OpenAIProvider:
    """Any server speaking the OpenAI chat completions API with SSE streaming:
    Ollama, llama.cpp's server, vLLM, hosted APIs."""

    kind = "openai"

    def __init__(self, *, name: str, url: str, model: str, api_key: str = "",
                 limits: Limits | None = None, unavailable: str = "") -> None:
        self.name, self.model = name, model
        self.url = url.rstrip("/")
        self.where = origin(self.url)
        self.limits = limits or Limits()
        self.unavailable = unavailable
        self._key = api_key
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAIProvider(name={self.name!r}, url={self.url!r}, model={self.model!r})"

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            # A fresh connection per answer: llama.cpp's server closes idle ones
            # under a pooled client ("Can not write request body"); one handshake
            # is little beside a generation.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=8),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.limits.first_token_s),
                auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stream(self, messages: Sequence[Message], max_tokens: int) -> AsyncIterator[str]:
        import aiohttp

        headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        body = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens,
                "stream": True}
        try:
            async with self._client().post(f"{self.url}/chat/completions", json=body,
                                           headers=headers, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise await self._refused(resp)
                pieces = 0
                async for text in self._texts(resp):
                    pieces += 1
                    if pieces > min(self.limits.max_pieces, 2 * max_tokens + 16):
                        return  # a server that ignores max_tokens: the answer ends here
                    yield text
        except aiohttp.ClientPayloadError:
            raise ProviderError("the connection closed mid-answer") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(f"cannot reach {self.where}: "
                                f"{redact(f'{type(exc).__name__} {exc}', [self._key])}"
                                ) from None

    async def _refused(self, resp: aiohttp.ClientResponse) -> ProviderError:
        excerpt = ""
        try:
            raw = await resp.content.read(2048)
            data = json.loads(raw)
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                excerpt = str(data["error"].get("message", ""))
        except (ValueError, UnicodeDecodeError, OSError):
            pass
        except Exception as exc:  # aiohttp.ClientError, imported lazily
            log.debug("reading an error body failed: %s", type(exc).__name__)
        text = f"HTTP {resp.status}" + (f" ({redact(excerpt, [self._key])})" if excerpt else "")
        return ProviderError(text, retry_after=retry_after_s(resp.headers.get("Retry-After"),
                                                              time.time()))

    async def _texts(self, resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
        if resp.content_type == "application/json":  # a server that does not stream
            raw = await resp.content.read(self.limits.max_total_bytes + 1)
            if len(raw) > self.limits.max_total_bytes:
                raise ProviderError(f"answer over {self.limits.max_total_bytes} bytes")
            yield _message_text(_json(raw))
            return
        data: list[bytes] = []
        done = False
        async for line in _lines(resp.content, self.limits):
            if line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
            elif not line and data:
                text, done = _event_text(b"\n".join(data))
                data = []
                if done:
                    return
                if text:
                    yield text
        if data:
            text, done = _event_text(b"\n".join(data))
            if text:
                yield text
        if not done:
            raise ProviderError("the stream ended without [DONE]")


async def _lines(content: aiohttp.StreamReader, limits: Limits) -> AsyncIterator[bytes]:
    """Lines of a body, each at most max_line_bytes, the body at most max_total_bytes."""
    buf = bytearray()
    total = 0
    async for chunk in content.iter_any():
        total += len(chunk)
        if total > limits.max_total_bytes:
            raise ProviderError(f"answer over {limits.max_total_bytes} bytes")
        buf += chunk
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[:end + 1]
            yield line
        if len(buf) > limits.max_line_bytes:
            raise ProviderError(f"a line of the stream is over {limits.max_line_bytes} bytes")
    if buf:
        yield bytes(buf)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProviderError("malformed stream: not JSON") from None


def _event_text(data: bytes) -> tuple[str, bool]:
    """(content, done) of one SSE event of a chat completion stream."""
    if data.strip() == b"[DONE]":
        return "", True
    event = _json(data)
    if not isinstance(event, dict):
        raise ProviderError("malformed stream: an event is not an object")
    if "error" in event:
        error = event["error"]
        message = error.get("message", "") if isinstance(error, dict) else error
        raise ProviderError(f"the endpoint reported an error: {redact(str(message))}")
    choices = event.get("choices")
    if not isinstance(choices, list):
        raise ProviderError("malformed stream: no choices")
    if not choices:
        return "", False
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        raise ProviderError("malformed stream: a choice has no delta")
    content = delta.get("content")
    return (content if isinstance(content, str) else ""), False


def _message_text(body: Any) -> str:
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ProviderError("malformed answer: no choices[0].message.content") from None
    if not isinstance(content, str):
        raise ProviderError("malformed answer: content is not a string")
    return content


# -- the embedded generator ------------------------------------------------------------------
