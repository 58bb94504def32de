"""The last stage of an ask: an answer in words, when memory is not enough.

    recall    the ranking's answer (p2pnode.node.Spore.recall)   → Recalled
    route     p2pnode.answering.decide: memory, words or "I don't know" → Asked
    turn      one generation at a time per spore (MAX_RUNNING); up to MAX_WAITING
              asks wait their turn for TURN_WAIT_S, the others are refused (Busy, 503)
    events    the stream: sources, then the tokens as the provider chain
              (p2pnode.providers) sends them, then done (or error)
    answer    the same, collected into one JSON (a failed generation falls
              back to the ranking's own answer, with `generation_error`)

What a provider sends is cleaned (p2pnode.answering.clean) and cut at
MAX_ANSWER_CHARS before anyone sees it. A generated answer stays on this
device, in memory, until it is rated (`peek`, `take`: p2pnode.node.Spore.rate):
rated up, it becomes a memory; otherwise it is forgotten (the KEPT newest
are kept). The question's text goes to the providers configured, and nowhere
else; it is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from p2pnode.answering import (
    MAX_ANSWER_CHARS,
    MEMORY_CONFIDENCE,
    Decision,
    Passage,
    cite,
    clean,
    decide,
    origin,
    passages,
    prompt,
    stored_text,
)
from p2pnode.errors import SporeError
from p2pnode.providers import THIS_DEVICE, GenerationError

if TYPE_CHECKING:
    from p2pnode.providers import Chain

__all__ = ["DEADLINE_S", "KEPT", "MAX_RUNNING", "MAX_TOKENS", "MAX_WAITING", "TURN_WAIT_S",
           "Asked", "Busy", "Generated", "Generation", "Recalled"]

log = logging.getLogger("spore.generate")

MAX_TOKENS = 256  # per answer: one or two sentences need far fewer
MAX_RUNNING = 1  # generations at once: the embedded one takes the cores it is given
MAX_WAITING = 4  # asks waiting for their turn; one more is refused at once
TURN_WAIT_S = 10.0  # an ask waits this long for its turn, then is refused
DEADLINE_S = 180.0  # a whole generation, fallbacks included (each provider has its own)
KEPT = 256  # generated answers kept (in memory, on this device) until rated
RETRY_AFTER_S = 5


class Busy(SporeError):
    """Generations are running and others wait already: HTTP 503, come back."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(RETRY_AFTER_S)}


@dataclass(frozen=True)
class Recalled:
    """What the ranking handed on: its JSON (`result`), the question (stays
    here), its words' embedding (the region its rating votes in), and
    whether the top memory was rated up for this very question."""

    result: dict[str, Any]
    question: str
    words: np.ndarray = field(repr=False)
    rated_up: bool


@dataclass(frozen=True)
class Asked:
    """An ask routed (`decision`): what the sources event says (`result`,
    with "route"), and what a generation needs."""

    result: dict[str, Any]
    decision: Decision
    question: str = field(repr=False)
    words: np.ndarray = field(repr=False)
    given: tuple[Passage, ...] = ()
    from_memory: str | None = None  # the ranking's own answer (the fallback)

    @property
    def generating(self) -> bool:
        return self.decision.route == "generated"


@dataclass(frozen=True)
class Generated:
    """A generated answer kept until rated: as its memory would keep it."""

    text: str
    origin: str
    question: str = field(repr=False)
    words: np.ndarray = field(repr=False)
    cited: tuple[str, ...] = ()


class Generation:
    """The generation stage of one spore (owned by the event loop). `chain`
    None: generation is off, every ask is answered from memory."""

    def __init__(self, chain: Chain | None, *, threshold: float = MEMORY_CONFIDENCE,
                 ungrounded: bool = False, max_tokens: int = MAX_TOKENS) -> None:
        self.chain = chain
        self.threshold = threshold
        self.ungrounded = ungrounded  # the user's default: answer without memories
        self.max_tokens = max_tokens
        self._slot = asyncio.Semaphore(MAX_RUNNING)
        self._running = 0
        self._waiting = 0
        self._kept: OrderedDict[str, Generated] = OrderedDict()
        self.counters: Counter[str] = Counter()

    # -- route ---------------------------------------------------------------------------
    def route(self, recalled: Recalled, *, generate: bool | None = None,
              ungrounded: bool | None = None) -> Asked:
        """Where the answer comes from (p2pnode.answering.decide). `generate`
        None: whenever a chain exists; `ungrounded` None: the configured default."""
        r = recalled.result
        given = tuple(passages(r["sources"]))
        choose = functools.partial(
            decide, confidence=float(r["confidence"]), rated_up=recalled.rated_up,
            generate=self.chain is not None and generate is not False,
            ungrounded=self.ungrounded if ungrounded is None else ungrounded,
            threshold=self.threshold)
        decision = choose(held=bool(r["sources"]), abstained=bool(r["abstained"]))
        if decision.route == "generated" and decision.grounded and not given:
            # Every source shown was rated down for this question: nothing to
            # ground words on, as if nothing were held.
            decision = choose(held=False, abstained=True)
        self.counters[decision.route] += 1
        result = {**r, "route": decision.route}
        if decision.route != "generated":
            return Asked(result, decision, recalled.question, recalled.words)
        result["answer"] = None  # it comes in words (done, or the JSON's "generated")
        if result["answer_id"] is None:  # nothing held: the words are still rated by it
            result["answer_id"] = secrets.token_hex(8)
        return Asked(result, decision, recalled.question, recalled.words,
                     given if decision.grounded else (), from_memory=r["answer"])

    # -- turn ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def turn(self, asked: Asked) -> AsyncIterator[None]:
        """The generation slot for `asked` (nothing to take when it is not
        generating): waits up to TURN_WAIT_S behind at most MAX_WAITING others,
        else Busy."""
        if not asked.generating:
            yield
            return
        if self._slot.locked() and self._waiting >= MAX_WAITING:
            self.counters["busy"] += 1
            raise Busy(f"{self._running} answer(s) are being generated and {self._waiting} "
                       f"wait: try again in a few seconds, or ask with generate=false "
                       "(spore ask --no-generate) for the answer from memory")
        self._waiting += 1
        try:
            async with asyncio.timeout(TURN_WAIT_S):
                await self._slot.acquire()
        except TimeoutError:
            self.counters["busy"] += 1
            raise Busy(f"no turn to generate within {TURN_WAIT_S:g} s (one answer is "
                       "generated at a time): try again, or ask with generate=false") from None
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._slot.release()

    # -- the stream --------------------------------------------------------------------------
    async def events(self, asked: Asked) -> AsyncGenerator[dict[str, Any]]:
        """The events of one answer: sources, then tokens and done (or error);
        sources and done alone when it comes from memory. Hold its `turn`.
        Closing it early (the asker went away) stops the generation."""
        yield {"event": "sources", **asked.result}
        if not asked.generating:
            yield self._from_memory(asked)
            return
        assert self.chain is not None  # routed to words only when a chain exists
        self.counters["started"] += 1
        pieces: list[str] = []
        size, provider, model, finished, cut = 0, "", "", False, False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        try:
            async with contextlib.aclosing(self.chain.stream(
                    prompt(asked.question, asked.given), self.max_tokens)) as chain:
                while size < MAX_ANSWER_CHARS:
                    try:
                        async with asyncio.timeout_at(deadline):
                            piece = await anext(chain)
                    except StopAsyncIteration:
                        break
                    provider, model = piece.provider, piece.model
                    text = clean(piece.text)[:MAX_ANSWER_CHARS - size]
                    if text:
                        pieces.append(text)
                        size += len(text)
                        yield {"event": "token", "text": text}
                else:
                    cut = True
                    self.counters["cut"] += 1
            finished = True
        except (GenerationError, TimeoutError) as exc:
            finished = True
            why = str(exc) if isinstance(exc, GenerationError) else (
                f"the answer took over {DEADLINE_S:g} s")
            self.counters["failed"] += 1
            yield {"event": "error", "answer_id": asked.result["answer_id"], "error": why}
            return
        except Exception:  # our bug, or a provider's we did not map: the stream ends cleanly
            finished = True
            log.exception("a generation failed unexpectedly")
            self.counters["failed"] += 1
            yield {"event": "error", "answer_id": asked.result["answer_id"],
                   "error": "internal error; the daemon's log has the details"}
            return
        finally:
            if not finished:  # the asker went away (cancelled, or closed early)
                self.counters["cancelled"] += 1
        yield self._done(asked, "".join(pieces).strip(), provider, model, cut)

    def _from_memory(self, asked: Asked) -> dict[str, Any]:
        r = asked.result
        first = r["sources"][0]["id"] if asked.decision.route == "memory" else None
        return {"event": "done", "answer_id": r["answer_id"], "route": asked.decision.route,
                "answer": r["answer"], "citations": [{"n": 1, "id": first}] if first else [],
                "provider": None, "model": None}

    def _done(self, asked: Asked, text: str, provider: str, model: str,
              cut: bool) -> dict[str, Any]:
        answer_id = asked.result["answer_id"]
        if not text:
            self.counters["failed"] += 1
            return {"event": "error", "answer_id": answer_id,
                    "error": f"{provider or 'the provider'} answered nothing printable"}
        cited = cite(text, asked.given)
        self.counters["ignored_citations"] += cited.ignored
        self.counters["done"] += 1
        self._keep(answer_id, Generated(stored_text(text, cited),
                                   origin(model, cited.ids, grounded=asked.decision.grounded),
                                   asked.question, asked.words, tuple(cited.ids)))
        return {"event": "done", "answer_id": answer_id, "route": "generated", "answer": text,
                "citations": cited.json(), "ignored_citations": cited.ignored,
                "grounded": asked.decision.grounded, "provider": provider, "model": model,
                "cut": cut}

    # -- the whole ---------------------------------------------------------------------------
    async def answer(self, asked: Asked) -> dict[str, Any]:
        """The answer as one JSON: the ranking's, plus "route" and, in words,
        "generated" {text, citations, provider, model, grounded}. A generation
        that fails falls back to the ranking's answer, saying why."""
        if not asked.generating:
            return asked.result
        last: dict[str, Any] = {}
        async with self.turn(asked), contextlib.aclosing(self.events(asked)) as events:
            async for event in events:
                last = event
        if last["event"] == "error":
            fallback = "memory" if asked.decision.grounded and asked.from_memory else "unknown"
            return {**asked.result, "route": fallback, "answer": asked.from_memory,
                    "generation_error": last["error"]}
        return {**asked.result, "answer": last["answer"], "generated": {
            k: last[k] for k in ("citations", "provider", "model", "grounded",
                                 "ignored_citations", "cut")} | {"text": last["answer"]}}

    # -- what was said, until rated ---------------------------------------------------------
    def _keep(self, answer_id: str, said: Generated) -> None:
        self._kept[answer_id] = said
        while len(self._kept) > KEPT:
            self._kept.popitem(last=False)

    def take(self, answer_id: str) -> Generated | None:
        """The generated answer of `answer_id`, if it is still kept (once)."""
        return self._kept.pop(answer_id, None)

    def peek(self, answer_id: str) -> Generated | None:
        """The generated answer of `answer_id`, if it is still kept."""
        return self._kept.get(answer_id)

    def status(self) -> dict[str, Any]:
        """Each provider's state, where questions go, the routing's counters."""
        providers = self.chain.status() if self.chain is not None else []
        where = self.chain.where_questions_go() if self.chain is not None else []
        return {"on": self.chain is not None, "providers": providers,
                "questions_go": where or [THIS_DEVICE],
                "leaves_device": any(w != THIS_DEVICE for w in where),
                "threshold": self.threshold, "ungrounded": self.ungrounded,
                "running": self._running, "waiting": self._waiting,
                "kept": len(self._kept), "counters": dict(self.counters)}

