"""The ask and rate paths across spores, in one process (tests/harness.py):
real Spore objects, real SQLite files, the DHT over a fake network, gossip by
direct calls. What the real-process tests prove for the wiring
(tests/test_swarm.py, tests/test_votes_questions.py), these prove for the
behaviour, in a fraction of the time: an answer taught anywhere is found
everywhere with its provenance; a rating acts at once on the spore that cast
it and everywhere once gossip carried it; a rejected answer goes last (and is
not even fetched); each voice weighs its voter's trust.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents import consensus, learner
from crdt.votes import fitness
from p2pnode.node import Spore, TeachItem
from tests.harness import FakeEncoder, Harness, Node, alone

QUESTION = "How do I install Debian?"
# Both answer it; the fake encoder (tests/harness.py) puts the first ahead
# by cosine: it shares more of the question's words.
FIRST = "To install Debian, boot the installer image from a USB stick."
SECOND = "Debian installs packages with apt from the mirrors."
OTHER = "My cat likes fish."


def run(test: Callable[[], Coroutine[Any, Any, None]], timeout_s: float = 60.0) -> None:
    """Run `test` on a fresh loop; fail on anything the loop reports."""
    reported: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        try:
            await asyncio.wait_for(test(), timeout_s)
        finally:
            gc.collect()

    asyncio.run(main())
    assert not reported, reported


async def taught(h: Harness, teacher: Node) -> dict[str, bytes]:
    """FIRST, SECOND and OTHER taught on `teacher`, published; their ids by text."""
    ids = await teacher.spore.teach([TeachItem(FIRST), TeachItem(SECOND), TeachItem(OTHER)])
    await h.settle()
    return {text: mid for text, (mid, _) in zip((FIRST, SECOND, OTHER), ids, strict=True)}


async def ranked(spore: Spore, question: str = QUESTION, top: int = 3) -> list[dict[str, Any]]:
    sources: list[dict[str, Any]] = (await spore.ask(question, top))["sources"]
    return sources


def texts(sources: list[dict[str, Any]]) -> list[str]:
    return [s["text"] for s in sources]


def moved_cosine(h: Harness, text: str, away_from: str, question: str = QUESTION) -> float:
    """The cosine a memory ranks by once `away_from` was rejected for the
    question: with the question moved away from it (learner.feedback_query),
    by the memories' embeddings as their records keep them (float16)."""
    q = h.encoder.embed([question])[0]
    mine, gone = h.encoder.embed([text, away_from]).astype("<f2").astype(np.float32)
    return float(mine / np.linalg.norm(mine) @ learner.feedback_query(q, gone[None]))


def by_text(sources: list[dict[str, Any]], text: str) -> dict[str, Any]:
    return next(s for s in sources if s["text"] == text)


def test_taught_on_one_spore_answered_on_another_with_its_provenance(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            founder, teacher, asker = await h.spores(3)
            ids = await taught(h, teacher)
            out = await asker.spore.ask(QUESTION)
            assert out["answer"] == FIRST and out["answer_id"]
            assert texts(out["sources"])[:2] == [FIRST, SECOND]
            best = out["sources"][0]
            assert best["remote"] is True and best["id"] == ids[FIRST].hex()
            assert best["author"] == teacher.key.hex()
            assert best["author_membership"]["kind"] == "invited"
            assert best["author_membership"]["standing"] == "member"
            assert 0.0 < out["confidence"] < 1.0
            assert out["memories_searched"] == 0  # nothing held here: all came from the swarm
            # The answer given was adopted: rated (and found) here from now on.
            await asker.spore.rate(out["answer_id"], True)
            again = await asker.spore.ask(QUESTION)
            assert again["sources"][0]["id"] == ids[FIRST].hex()
            assert "remote" not in again["sources"][0]
            assert (await asker.spore.memory(ids[FIRST]))["author"] == teacher.key.hex()
            assert founder.spore.counters["asks"] == 0
    run(scenario)


def test_a_down_vote_acts_at_once_here_and_everywhere_once_gossiped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            founder, teacher, other, fresh = await h.spores(4)
            await taught(h, teacher)
            before = await founder.spore.ask(QUESTION)
            assert before["answer"] == FIRST
            assert texts(await ranked(other.spore))[:2] == [FIRST, SECOND]
            await founder.spore.rate(before["answer_id"], False)
            # At once on the spore that voted, before any gossip:
            here = await ranked(founder.spore)
            assert here[0]["text"] == SECOND
            assert here[-1]["text"] == FIRST and here[-1]["rejected"] is True
            assert texts(await ranked(other.spore))[:2] == [FIRST, SECOND]  # not reached yet
            await h.settle()
            for node in (teacher, other):  # they hold FIRST: it ranks last, marked
                sources = await ranked(node.spore)
                assert sources[0]["text"] == SECOND
                assert sources[-1]["text"] == FIRST and sources[-1]["rejected"] is True
            # A spore that holds neither does not even fetch what was rejected.
            sources = await ranked(fresh.spore)
            assert sources[0]["text"] == SECOND and FIRST not in texts(sources)
            assert fresh.parts.swarm.counters["skipped_rejected"] >= 1
    run(scenario)


def test_an_up_vote_lifts_its_answer_on_every_spore(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            founder, teacher, other = await h.spores(3)
            await taught(h, teacher)
            scores = {n.host: {s["text"]: s["score"] for s in await ranked(n.spore)}
                      for n in h.nodes}
            # The answer is FIRST: rated down, the next ask answers SECOND, rated up.
            out = await founder.spore.ask(QUESTION)
            assert out["answer"] == FIRST
            await founder.spore.rate(out["answer_id"], False)
            up = await founder.spore.ask(QUESTION)
            assert up["answer"] == SECOND
            await founder.spore.rate(up["answer_id"], True)
            await h.settle()
            lift = consensus.REGION_WEIGHT * fitness(1.0, 0.0)  # the founder weighs 1
            # FIRST was rejected for the question: the cosines are taken
            # with the question moved away from it (learner.feedback_query).
            moved = moved_cosine(h, SECOND, away_from=FIRST)
            assert moved < scores[founder.host][SECOND]
            for node in (teacher, other):
                sources = await ranked(node.spore)
                assert sources[0]["text"] == SECOND
                assert by_text(sources, SECOND)["score"] == pytest.approx(moved + lift, abs=2e-4)
    run(scenario)


def test_a_voice_weighs_its_voters_trust_and_ones_own_weighs_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            founder, teacher, member, judge = await h.spores(4)
            ids = await taught(h, teacher)
            for n in h.nodes:  # each asks once, and keeps FIRST, the answer it gave
                await ranked(n.spore)
            out = await member.spore.ask(QUESTION)
            await member.spore.rate(out["answer_id"], False)  # FIRST, down
            out = await member.spore.ask(QUESTION)
            assert out["answer"] == SECOND  # its own vote acted at once
            await member.spore.rate(out["answer_id"], True)
            # Here its voice weighs 1 (the asker's own vote always acts fully).
            mine = by_text(await ranked(member.spore), SECOND)["score"]
            # FIRST rejected: SECOND's cosine is taken with the question moved away from it.
            moved = moved_cosine(h, SECOND, away_from=FIRST)
            assert mine == pytest.approx(
                moved + consensus.REGION_WEIGHT * fitness(1.0, 0.0), abs=2e-4)
            await h.settle()
            # Elsewhere it weighs the member's trust: a fresh invitation, below a founder's.
            weight = judge.spore.trust[member.key]
            assert 0.0 < weight < 1.0 and judge.spore.trust[founder.key] == 1.0
            votes = judge.spore.votes_for(ids[SECOND])
            assert votes["up"] == 1 and votes["weighed_up"] == pytest.approx(weight, abs=1e-6)
            theirs = by_text(await ranked(judge.spore), SECOND)["score"]
            assert theirs == pytest.approx(
                moved + consensus.REGION_WEIGHT * fitness(weight, 0.0), abs=2e-4)
            assert moved < theirs < mine
    run(scenario)


def test_a_vote_on_another_question_moves_nothing_here(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            founder, teacher = await h.spores(2)
            await taught(h, teacher)
            plain = await ranked(teacher.spore)
            out = await founder.spore.ask("Which mirrors does apt use for Debian packages?")
            assert out["answer"] == SECOND
            await founder.spore.rate(out["answer_id"], False)
            await h.settle()
            assert [(s["text"], s["score"]) for s in await ranked(teacher.spore)] == \
                [(s["text"], s["score"]) for s in plain]
    run(scenario)


# --- one vote, held once ---------------------------------------------------------------

def test_a_rating_is_written_once_and_kept_across_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            founder = await h.start(gossip_file=True)
            ids = await taught(h, founder)
            out = await founder.spore.ask(QUESTION)
            assert out["answer"] == FIRST
            await founder.spore.rate(out["answer_id"], True)
            # The gossip store keeps it (and offers it to every spore): no second copy.
            assert founder.storage.count_votes() == 0
            assert len(founder.parts.gossip.with_prefix(b"V")) == 1
            await h.stop(founder)
            again = await h.start(founder.state_dir, gossip_file=True)
            assert again.key == founder.key
            assert again.spore.votes_for(ids[FIRST])["up"] == 1
            out = await again.spore.ask(QUESTION)
            assert out["answer"] == FIRST
            # The next rating builds on the entry kept (a higher seq): up then
            # down is one voice saying nothing, not a stale down vote refused.
            await again.spore.rate(out["answer_id"], False)
            votes = again.spore.votes_for(ids[FIRST])
            assert (votes["voters"], votes["up"], votes["down"]) == (1, 0, 0)
            assert len(again.parts.gossip.with_prefix(b"V")) == 1
    run(scenario)


def test_a_spore_alone_keeps_its_own_votes_across_restarts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with alone(tmp_path / "s") as spore:
            await spore.teach([TeachItem(FIRST), TeachItem(SECOND), TeachItem(OTHER)])
            out = await spore.ask(QUESTION)
            assert out["answer"] == FIRST
            await spore.rate(out["answer_id"], False)
            assert texts(await ranked(spore))[0] == SECOND  # at once
            assert spore.storage.count_votes() == 1  # no gossip store: storage keeps it
        async with alone(tmp_path / "s") as spore:
            sources = await ranked(spore)
            assert sources[0]["text"] == SECOND
            assert sources[-1]["text"] == FIRST and sources[-1]["rejected"] is True
            out = await spore.ask(QUESTION)
            await spore.rate(out["answer_id"], True)
            assert spore.storage.count_votes() == 2
        async with alone(tmp_path / "s") as spore:
            assert texts(await ranked(spore))[0] == SECOND
            assert (await spore.status())["votes"] == 2
    run(scenario)


def test_an_ask_embeds_its_question_once_by_its_words(tmp_path: Path) -> None:
    """One encoder call an ask (a second one, for the votes' question, was most
    of an ask at 100,000 memories), on the question's words: asked in other
    case, spacing and end marks, it is the same question, ranked the same."""
    async def scenario() -> None:
        encoder = FakeEncoder()
        async with alone(tmp_path / "s", encoder) as spore:
            await spore.teach([TeachItem(FIRST), TeachItem(SECOND), TeachItem(OTHER)])
            calls = encoder.calls
            out = await spore.ask(QUESTION)
            assert encoder.calls == calls + 1
            again = await spore.ask("  how do I install  DEBIAN ")
            assert [(s["id"], s["score"]) for s in again["sources"]] == \
                [(s["id"], s["score"]) for s in out["sources"]]
    run(scenario)


def test_a_question_of_marks_alone_is_asked_as_given(tmp_path: Path) -> None:
    """Words left empty by the marks stripped ("?!", "...") still embed: the
    text as given, one call, an answer or an "I don't know", never an error."""
    async def scenario() -> None:
        encoder = FakeEncoder()
        async with alone(tmp_path / "s", encoder) as spore:
            await spore.teach([TeachItem(FIRST), TeachItem(OTHER)])
            for marks in ("?!", "...", "¿?", "«»"):
                calls = encoder.calls
                out = await spore.ask(marks)
                assert encoder.calls == calls + 1
                assert out["answer_id"] is not None and len(out["sources"]) == 2
    run(scenario)


# --- the agents' say -------------------------------------------------------------------

def test_agents_without_an_earned_say_rank_in_the_shadow_and_are_judged(tmp_path: Path
                                                                        ) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            teacher, plain = await h.spores(2)
            with_agents = await h.start(agents=True)
            await taught(h, teacher)
            for question in (QUESTION, "Which mirrors does apt use?"):
                without = await plain.spore.ask(question)
                out = await with_agents.spore.ask(question)
                # No say yet: the answer and its scores are the cosine's and the votes'.
                assert out["agents_weight"] == 0.0
                assert [(s["id"], s["score"]) for s in out["sources"]] == \
                    [(s["id"], s["score"]) for s in without["sources"]]
                assert all("agents" not in s for s in out["sources"])
                rated = await with_agents.spore.rate(out["answer_id"], True)
                assert rated["agents_rated"] > 0  # the shadow ranking named who took part
            # Their pick was put against the cosine's on both (never-rated) questions.
            record = (await with_agents.spore.status())["agents"]["record"]
            assert record["novel"]["of"] == 2 and record["familiar"]["of"] == 0
            assert record["novel"]["cosine_right"] == 2
    run(scenario)


def test_the_agents_work_on_their_own_thread(tmp_path: Path) -> None:
    """The agents' scoring runs on the agents' thread, never on the compute
    thread where the next ask's encoder and index wait: their shadow ranking
    of one answer kept the next ask waiting behind it."""
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            node = await h.start(agents=True)
            await node.spore.teach([TeachItem(FIRST), TeachItem(SECOND), TeachItem(OTHER)])
            colony = node.parts.agents.colony  # type: ignore[union-attr]
            threads: list[str] = []
            score = colony.score

            def watched(*args: Any) -> Any:
                threads.append(threading.current_thread().name)
                return score(*args)

            colony.score = watched  # type: ignore[method-assign]
            out = await node.spore.ask(QUESTION)
            await node.spore.rate(out["answer_id"], True)  # awaits the shadow ranking
            assert threads and all(t.startswith("spore-agents") for t in threads), threads
    run(scenario)
