"""The generation stage of an ask (p2pnode.generation) in one process: real
Spore objects and SQLite files (tests/harness.py), the real provider chain
(p2pnode.providers) talking HTTP to the OpenAI-compatible stub server
(tests/llm_stub.py) on 127.0.0.1. The daemon-level proofs (NDJSON over the
API, fallback, cooldown, egress, two daemons) are tests/test_generate_daemon.py.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from p2pnode import generation as gen_mod
from p2pnode.answering import MAX_ANSWER_CHARS
from p2pnode.errors import TooLarge
from p2pnode.generation import Busy, Generation
from p2pnode.node import Spore, TeachItem
from p2pnode.providers import Chain, Limits, OpenAIProvider
from tests.harness import Harness, alone
from tests.llm_stub import StubServer, async_stub
from tests.test_ask_inprocess import run

FACTS = [("When does the backup job run?", "The backup job runs restic every night at 02:00."),
         ("Where is the office printer?", "The printer is on the second floor by the kitchen."),
         ("What is the guest wifi password?", "The guest wifi password is on the router.")]
QUESTION = "When does the backup job run?"
REPLY = "Every night at 02:00, by restic [1]."
ALWAYS = 1.01  # a threshold no confidence reaches: every ask that is not rated up generates


def chain_for(stub: StubServer, *, first_token_s: float = 5.0) -> Chain:
    limits = Limits(first_token_s=first_token_s, deadline_s=20.0, cooldown_s=1.0)
    return Chain([OpenAIProvider(name="stub", url=stub.url, model=stub.model, limits=limits)])


@asynccontextmanager
async def speaking(tmp: Path, stub: StubServer, *, threshold: float = ALWAYS,
                   first_token_s: float = 5.0) -> AsyncIterator[Spore]:
    """A spore on its own that knows FACTS and generates through `stub`."""
    chain = chain_for(stub, first_token_s=first_token_s)
    async with alone(tmp / "spore") as spore:
        spore.generation = Generation(chain, threshold=threshold)
        await spore.teach([TeachItem(a, q) for q, a in FACTS])
        try:
            yield spore
        finally:
            await chain.close()


async def memory_ids(spore: Spore) -> dict[str, str]:
    return {m["text"]: m["id"] for m in await spore.memories(100, 0)}


def test_an_answer_in_words_cites_real_memories_and_stays_local_until_rated(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with async_stub(reply=REPLY) as stub, speaking(tmp_path, stub) as spore:
            ids = await memory_ids(spore)
            got = await spore.ask(QUESTION)
            assert got["route"] == "generated" and got["answer"] == REPLY
            words = got["generated"]
            assert words["citations"] == [{"n": 1, "id": ids[FACTS[0][1]], "by": "marker"}]
            assert got["sources"][0]["id"] == ids[FACTS[0][1]]
            assert (words["provider"], words["model"], words["grounded"]) == (
                "stub", "stub-model", True)
            assert stub.calls == 1
            user = stub.requests[0]["body"]["messages"][1]["content"]
            assert f"[1] {FACTS[0][0]} {FACTS[0][1]}" in user and QUESTION in user
            # Unrated, it is no memory: nothing was stored.
            assert len(await memory_ids(spore)) == len(FACTS)
            assert spore.generation.peek(got["answer_id"]) is not None

    run(scenario)


def test_a_confident_memory_answers_without_calling_a_provider(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with async_stub(reply=REPLY) as stub, \
                speaking(tmp_path, stub, threshold=0.5) as spore:
            got = await spore.ask(FACTS[1][0])
            assert got["confidence"] >= 0.5
            assert got["route"] == "memory" and got["answer"] == FACTS[1][1]
            assert "generated" not in got and stub.calls == 0
            off = await spore.ask(QUESTION, generate=False)  # the asker says: memory only
            assert off["route"] == "memory" and stub.calls == 0

    run(scenario)


def test_rated_up_words_become_a_memory_served_everywhere_without_generating(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h, async_stub(reply=REPLY) as stub_a, \
                async_stub(reply="never said") as stub_b:
            a, b = await h.spores(2)
            chains = [chain_for(stub_a), chain_for(stub_b)]
            a.spore.generation = Generation(chains[0], threshold=ALWAYS)
            b.spore.generation = Generation(chains[1], threshold=ALWAYS)
            await a.spore.teach([TeachItem(ans, q) for q, ans in FACTS])
            source = (await memory_ids(a.spore))[FACTS[0][1]]
            got = await a.spore.ask(QUESTION)
            rated = await a.spore.rate(got["answer_id"], True)
            assert rated["generated"] and rated["stored"] and rated["up"] == 1
            stored = await a.spore.memory(bytes.fromhex(rated["memory_id"]))
            # The question's text stays here: the memory has none.
            assert stored["question"] == "" and stored["text"] == REPLY
            assert stored["origin"] == f"generated by stub-model from {source}"
            assert stored["author"] == a.key.hex()
            again = await a.spore.ask(QUESTION)
            assert again["route"] == "memory" and again["answer"] == REPLY
            assert again["sources"][0]["id"] == rated["memory_id"] and stub_a.calls == 1
            await h.settle()  # published, and the vote gossiped
            there = await b.spore.ask(QUESTION)
            assert there["route"] == "memory" and there["answer"] == REPLY
            assert stub_b.calls == 0
            # A second rating of the same answer acts on the stored memory
            # (one up and one down from this voter: it says nothing any more).
            down = await a.spore.rate(got["answer_id"], False)
            assert down["memory_id"] == rated["memory_id"] and down["up"] == 0
            for chain in chains:
                await chain.close()

    run(scenario)


def test_words_rated_down_are_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with async_stub(reply=REPLY) as stub, speaking(tmp_path, stub) as spore:
            got = await spore.ask(QUESTION)
            rated = await spore.rate(got["answer_id"], False)
            assert rated == {"memory_id": None, "vote": "down", "generated": True,
                             "stored": False, "agents_rated": 0, "up": 0, "down": 0,
                             "fitness": 0.0}
            assert len(await memory_ids(spore)) == len(FACTS)
            assert spore.votes_for(bytes.fromhex(got["sources"][0]["id"]))["down"] == 0

    run(scenario)


def test_ungrounded_words_when_allowed_are_marked_and_rated_like_others(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with async_stub(reply="Leonardo da Vinci.") as stub, alone(tmp_path) as spore:
            chain = chain_for(stub)
            spore.generation = Generation(chain, ungrounded=False)
            assert (await spore.ask("Who painted the Mona Lisa?"))["route"] == "unknown"
            assert stub.calls == 0  # nothing held, ungrounded not allowed: no words
            got = await spore.ask("Who painted the Mona Lisa?", ungrounded=True)
            assert got["route"] == "generated" and not got["generated"]["grounded"]
            assert got["answer_id"] and got["sources"] == []
            assert "Passages" not in stub.requests[0]["body"]["messages"][1]["content"]
            rated = await spore.rate(got["answer_id"], True)
            assert rated["origin"] == "generated by stub-model (ungrounded)"
            await chain.close()

    run(scenario)


def test_a_failed_generation_falls_back_to_the_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with async_stub(mode="500") as stub, speaking(tmp_path, stub) as spore:
            got = await spore.ask(QUESTION)
            assert got["route"] == "memory" and got["answer"] == FACTS[0][1]
            assert "HTTP 500" in got["generation_error"] and "generated" not in got
            assert spore.generation.status()["counters"]["failed"] == 1

    run(scenario)


def test_hostile_provider_output_is_bounded_and_harmless(tmp_path: Path) -> None:
    hostile = (" [0] [999] [1a] \x1b[2J\x1b]0;pwned\x07 \u202eevil\u200b [2] "
               + " ".join(["A" * 50_000] * 20))  # ~1 MB, each line under the stream's cap
    async def scenario() -> None:
        async with async_stub(reply=hostile) as stub, speaking(tmp_path, stub) as spore:
            ids = await memory_ids(spore)
            got = await spore.ask(QUESTION)
            text = got["answer"]
            assert got["route"] == "generated" and len(text) <= MAX_ANSWER_CHARS
            assert got["generated"]["cut"] is True
            assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e]", text)
            # [0], [999], [1a], and [2J] (what is left of the escape sequence once cleaned)
            assert got["generated"]["ignored_citations"] == 4
            cited = [c["id"] for c in got["generated"]["citations"]]
            assert len(cited) == 1 and cited[0] in ids.values()
            rated = await spore.rate(got["answer_id"], True)  # stored as cleaned and cut
            stored = await spore.memory(bytes.fromhex(rated["memory_id"]))
            assert len(stored["text"]) <= MAX_ANSWER_CHARS and "\x1b" not in stored["text"]
            assert stored["origin"] == f"generated by stub-model from {cited[0]}"

    run(scenario)


async def _until(condition: Any, what: str, deadline_s: float = 10.0) -> None:
    """Poll `condition` on the loop until true (conftest.wait_for's async twin)."""
    end = asyncio.get_running_loop().time() + deadline_s
    for _ in itertools.count():
        if condition():
            return
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def test_one_generation_at_a_time_a_few_wait_the_rest_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen_mod, "TURN_WAIT_S", 0.5)

    async def scenario() -> None:
        async with async_stub(mode="hang") as stub, \
                speaking(tmp_path, stub, first_token_s=30.0) as spore:
            status = spore.generation.status
            first = asyncio.ensure_future(spore.ask(QUESTION))
            await _until(lambda: status()["running"] == 1 and stub.calls == 1, "first")
            waiting = [asyncio.ensure_future(spore.ask(QUESTION))
                       for _ in range(gen_mod.MAX_WAITING)]
            await _until(lambda: status()["waiting"] == gen_mod.MAX_WAITING, "waiters")
            with pytest.raises(Busy, match="try again"):
                await spore.ask(QUESTION)  # refused at once: the queue is full
            for waiter in waiting:  # each gave up after TURN_WAIT_S
                with pytest.raises(Busy, match="no turn"):
                    await waiter
            assert stub.calls == 1  # the refused never reached a provider
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert status()["running"] == 0 and status()["counters"]["cancelled"] == 1
            assert status()["counters"]["busy"] == 1 + gen_mod.MAX_WAITING

    run(scenario)


def test_closing_the_stream_stops_the_generation(tmp_path: Path) -> None:
    async def scenario() -> None:
        reply = " ".join(f"w{i}" for i in range(100))
        async with async_stub(mode="slow", reply=reply, slow_s=0.2) as stub, \
                speaking(tmp_path, stub) as spore:
            asked = await spore.routed(QUESTION)
            seen = []
            async with spore.generation.turn(asked), \
                    aclosing(spore.generation.events(asked)) as events:
                async for event in events:
                    seen.append(event["event"])
                    if event["event"] == "token":
                        break  # the asker goes away
            status = spore.generation.status()
            assert seen == ["sources", "token"] and status["running"] == 0
            assert status["counters"]["cancelled"] == 1
            assert spore.generation.peek(asked.result["answer_id"]) is None
            tokens = status["providers"][0]["tokens"]
            assert tokens < 5  # the rest of the 100 words was never read

    run(scenario)


def test_no_words_from_sources_all_rated_down_for_the_question(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with async_stub(reply=REPLY) as stub, alone(tmp_path) as spore:
            chain = chain_for(stub)
            spore.generation = Generation(chain, threshold=ALWAYS)
            await spore.teach([TeachItem(FACTS[0][1], FACTS[0][0])])
            plain = await spore.ask(QUESTION, generate=False)
            await spore.rate(plain["answer_id"], False)  # the only memory: rejected here
            got = await spore.ask(QUESTION, top=1)
            assert got["sources"][0].get("rejected") and got["route"] == "unknown"
            assert stub.calls == 0
            await chain.close()

    run(scenario)


def test_a_rating_up_that_cannot_store_keeps_the_answer_to_rate_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with async_stub(reply=REPLY) as stub, speaking(tmp_path, stub) as spore:
            got = await spore.ask(QUESTION)
            spore.max_text_bytes = 16  # as a spore configured for tiny texts refuses it
            with pytest.raises(TooLarge):
                await spore.rate(got["answer_id"], True)
            assert spore.generation.peek(got["answer_id"]) is not None
            source = bytes.fromhex(got["sources"][0]["id"])
            assert spore.votes_for(source)["up"] == 0  # nothing voted meanwhile
            spore.max_text_bytes = 65_536
            rated = await spore.rate(got["answer_id"], True)
            assert rated["stored"] and spore.generation.peek(got["answer_id"]) is None

    run(scenario)
