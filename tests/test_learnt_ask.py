"""The ask's learnt stage in-process (tests/harness.py): after a down vote the
next ask moves away from the rejected memory's direction (Rocchio), not to
its near-copy; a spore with few ratings ranks exactly as without the
learner; training runs off the loop every LEARN_EVERY new votes, on capped
inputs, and nothing a peer's votes carry makes it or the ask fail.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents import learner
from crdt.votes import Counter
from dht import compact
from p2pnode import asking, ranking
from p2pnode.node import Spore, TeachItem
from tests.harness import Harness, alone
from tests.test_ask_inprocess import run

QUESTION = "How do I install Debian on a laptop?"
# FIRST leads by cosine and is wrong; TWIN is its near-copy (cosine 0.92 to
# it under the fake encoder) and second by cosine; RIGHT is another
# direction (0.51 to FIRST), third by cosine.
FIRST = "Install Debian on a laptop with the netinst image."
TWIN = "Install Debian with the netinst image on a USB laptop."
RIGHT = "Debian laptop install: load the wifi firmware blobs."


def scored(out: dict[str, Any]) -> list[tuple[str, float]]:
    return [(s["id"], s["score"]) for s in out["sources"]]


def test_after_a_down_vote_the_next_ask_leaves_the_rejected_direction(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            teacher, asker, other = await h.spores(3)
            await teacher.spore.teach([TeachItem(FIRST), TeachItem(TWIN), TeachItem(RIGHT)])
            await h.settle()
            first = await asker.spore.ask(QUESTION)
            by = {s["text"]: s["score"] for s in first["sources"]}
            assert first["answer"] == FIRST
            assert by[TWIN] > by[RIGHT]  # by the plain cosine, the near-copy comes next
            await asker.spore.rate(first["answer_id"], False)
            nxt = await asker.spore.ask(QUESTION)
            assert nxt["answer"] == RIGHT
            assert nxt["sources"][-1]["text"] == FIRST and nxt["sources"][-1]["rejected"]
            vec = {t: v for t, v in zip((FIRST, TWIN, RIGHT), h.encoder.embed(
                [FIRST, TWIN, RIGHT]), strict=True)}
            assert float(vec[RIGHT] @ vec[FIRST]) < 0.85 < float(vec[TWIN] @ vec[FIRST])
            # Another spore, which never saw FIRST, once gossip brought the
            # vote: it fetches FIRST for its direction alone (not a source).
            await h.settle()
            there = await other.spore.ask(QUESTION)
            assert there["answer"] == RIGHT
            assert FIRST not in [s["text"] for s in there["sources"]]
    run(scenario)


def test_a_rejected_memory_widens_the_shortlist(tmp_path: Path) -> None:
    """Alone with AGENT-less shortlists of `top`: with one memory rejected the
    ask reaches one deeper, so the next try is among the sources at all."""
    async def scenario() -> None:
        async with alone(tmp_path / "s") as spore:
            await spore.teach([TeachItem(FIRST), TeachItem(TWIN), TeachItem(RIGHT)])
            out = await spore.ask(QUESTION, top=1)
            assert [s["text"] for s in out["sources"]] == [FIRST]
            await spore.rate(out["answer_id"], False)
            out = await spore.ask(QUESTION, top=1)
            assert [s["text"] for s in out["sources"]] == [RIGHT]
    run(scenario)


QUESTIONS = [f"What does the {w} command of Debian do?" for w in (
    "aptitude", "dpkg", "reportbug", "debconf", "tasksel", "sources", "mirrors", "kernel",
    "grub", "systemd", "locale", "keyboard")]


def answer(word: str) -> str:
    return f"The {word} tool of Debian handles {word} things."


async def teach_faq(spore: Spore) -> None:
    await spore.teach([TeachItem(answer(q.split()[3])) for q in QUESTIONS])


def test_with_few_ratings_nothing_is_learnt_and_asks_rank_as_before(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with alone(tmp_path / "s") as spore:
            await teach_faq(spore)
            unseen = QUESTIONS[6:]
            before = [scored(await spore.ask(q, top=5)) for q in unseen]
            for q in QUESTIONS[:6]:  # six up votes: too few questions to validate on
                out = await spore.ask(q)
                await spore.rate(out["answer_id"], True)
            await spore.learn()  # what a due training would do, now
            assert spore.counters["learnt"] == 1 and spore.counters["learnt_pairs"] == 6
            assert spore.learnt is learner.NOTHING_LEARNT
            assert spore.learner_status()["lam"] == spore.learner_status()["mu"] == 0.0
            after = [scored(await spore.ask(q, top=5)) for q in unseen]
            assert after == before
    run(scenario)


def test_the_stage_leaves_candidates_alone_without_a_rejection_or_a_say() -> None:
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((4, 8)).astype(np.float32)
    cands = [ranking.Candidate(bytes([i]), float(0.1 * i), v, {}) for i, v in enumerate(vecs)]
    said = ranking.Opinions({bytes([1]): 0.5})
    q = rng.standard_normal(8).astype(np.float32)
    none = np.zeros((0, 8), np.float32), np.zeros(0, np.int64)
    same = ranking.learnt_cosines(q, cands, said, rejected=np.zeros((0, 8)), ups=none,
                                  learnt=learner.NOTHING_LEARNT)
    assert [c.cosine for c in same] == [c.cosine for c in cands]
    moved = ranking.learnt_cosines(q, cands, said, rejected=vecs[:1], ups=none,
                                   learnt=learner.NOTHING_LEARNT)
    want = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)) @ learner.feedback_query(
        q, vecs[:1])
    assert [c.cosine for c in moved] == pytest.approx(want.tolist(), abs=1e-6)
    # mu takes a memory rated up for an unlike question down by mu
    learnt = learner.Learnt(learner.NOTHING_LEARNT.u, learner.NOTHING_LEARNT.v, 0.0, 0.1)
    other = -q[None, :]  # a question unlike q rated memory 2 up
    taken = ranking.learnt_cosines(q, cands, said, rejected=np.zeros((0, 8)),
                                   ups=(other, np.array([2])), learnt=learnt)
    plain = ranking.learnt_cosines(q, cands, said, rejected=vecs[:1] * 0, ups=none,
                                   learnt=learnt)
    assert taken[2].cosine == pytest.approx(plain[2].cosine - 0.1, abs=1e-6)
    assert [c.cosine for i, c in enumerate(taken) if i != 2] == pytest.approx(
        [c.cosine for i, c in enumerate(plain) if i != 2], abs=1e-6)


def test_training_runs_every_learn_every_votes(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asking, "LEARN_EVERY", 5)
    monkeypatch.setattr(asking, "LEARN_REST", 0.0)

    async def scenario() -> None:
        async with alone(tmp_path / "s") as spore:
            await teach_faq(spore)
            for k, q in enumerate(QUESTIONS[:11], 1):
                out = await spore.ask(q)
                await spore.rate(out["answer_id"], True)
                if spore._learning is not None:
                    await spore._learning
                assert spore.counters["learnt"] == k // 5
            assert spore.counters["learnt_pairs"] == 10
    run(scenario)


def test_hostile_votes_neither_slow_training_nor_fail_the_ask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten thousand votes whose questions are huge, zero, or random, on the
    memories held here, as any member could send them: training reads at most
    LIMITS.max_pairs pairs and LIMITS.max_pool distractors, drops the
    hostile rows, and the ask still answers."""
    seen: list[tuple[int, int, int]] = []
    train = learner.train

    def spy(r: learner.Ratings, pool: Any = None, **kw: Any) -> learner.Learnt:
        seen.append((len(r), r.dropped, len(pool)))
        return train(r, pool, **kw)

    monkeypatch.setattr(learner, "train", spy)

    async def scenario() -> None:
        async with alone(tmp_path / "s") as spore:
            await teach_faq(spore)
            plain = await spore.ask(QUESTIONS[0])
            ids = [bytes.fromhex(s["id"]) for s in (await spore.ask(QUESTIONS[0], top=12))[
                "sources"]]
            rng = np.random.default_rng(3)
            dim = spore.dim
            for k in range(10_000):
                codes = rng.integers(-127, 128, dim).astype(np.int8)
                scale = (3e38, 0.0, 1e-3)[k % 3]
                spore._book.put_compact(ids[k % len(ids)], (rng.bytes(32), rng.bytes(32)),
                                        compact.pack(codes, scale), Counter(1, k % 2, 1 - k % 2))
            spore._new_votes = 10_000
            spore._maybe_learn()
            assert spore._learning is not None
            await spore._learning
            [(pairs, dropped, pool)] = seen
            assert pairs + dropped <= asking.LIMITS.max_pairs
            assert dropped > 0 and pool <= asking.LIMITS.max_pool
            again = await spore.ask(QUESTIONS[0])
            assert again["answer"] == plain["answer"]
    run(scenario)


def test_a_flood_of_votes_trains_the_learner_at_most_a_tenth_of_the_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Votes due for a training while the last one's rest (LEARN_REST times
    what it took) is not over wait for it; one reminder trains them then."""
    monkeypatch.setattr(asking, "LEARN_EVERY", 1)
    took: list[float] = []
    train = learner.train

    def slow(r: learner.Ratings, pool: Any = None, **kw: Any) -> learner.Learnt:
        t = time.monotonic()
        out = train(r, pool, **kw)
        time.sleep(0.2)  # a training that takes a known time (not a wait on a condition)
        took.append(time.monotonic() - t)
        return out

    monkeypatch.setattr(learner, "train", slow)

    async def scenario() -> None:
        async with alone(tmp_path / "s") as spore:
            await teach_faq(spore)
            started = time.monotonic()
            for q in QUESTIONS[:6]:
                out = await spore.ask(q)
                await spore.rate(out["answer_id"], True)
                if spore._learning is not None:
                    await spore._learning
            assert spore.counters["learnt"] == 1  # the others wait for its rest
            reminder = spore._learn_reminder
            assert reminder is not None
            first = spore._learning
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, reminder.when() - loop.time()) + 0.01)  # its time
            assert spore._learning is not None and spore._learning is not first
            await spore._learning  # the reminder trains the votes that waited
            assert spore.counters["learnt"] == 2
            assert spore.counters["learnt_pairs"] == 6
            gap = time.monotonic() - started
            assert gap >= asking.LEARN_REST * took[0] * 0.9
    run(scenario)


PLAIN = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
         "sierra", "tango", "uniform", "victor", "whiskey", "xray")


def plain_answer(word: str) -> str:
    return f"{word} explained"


def own_answer(word: str) -> str:  # further from its question than a decoy is
    return f"{word} explained with detail and length"


def test_an_unseen_question_leaves_a_memory_rated_up_for_an_unlike_question(
        tmp_path: Path) -> None:
    """taken_elsewhere end to end, on two spores (a voter holds one stance
    per memory, so the decoy's down vote comes from another): 24 questions
    rated up on their answers, 6 whose cosine first picked another
    question's answer (down, then up on their own). The learner gives the
    penalty a say (none of the held-out questions' answers is taken
    elsewhere; it wins the decoyed ones) and a question never rated, whose
    cosine picks a memory rated up for an unlike question, now gets its own
    answer; the rated questions keep theirs."""
    # Six: validation wins one only where its decoy's own question fell in
    # another fold (with three, all three shared a fold about one run in ten).
    decoyed = [("mercury", "alpha"), ("venus", "bravo"), ("earth", "charlie"),
               ("jupiter", "echo"), ("saturn", "foxtrot"), ("neptune", "golf")]
    unseen_word, unseen_decoy = "mars", "delta"
    unseen = f"{unseen_word} {unseen_decoy}"

    async def scenario() -> None:
        async with Harness(tmp_path) as h:
            one, two = await h.spores(2)
            a, b = one.spore, two.spore
            # b holds every memory: its asks and its learner see them all.
            await b.teach([TeachItem(plain_answer(w)) for w in PLAIN] + [
                TeachItem(own_answer(x)) for x, _ in [*decoyed, (unseen_word, "")]])
            await h.settle()
            for w in PLAIN:
                out = await a.ask(w)
                assert out["answer"] == plain_answer(w)
                await a.rate(out["answer_id"], True)
            await h.settle()
            for x, y in decoyed:
                out = await b.ask(f"{x} {y}")
                assert out["answer"] == plain_answer(y)  # the cosine is wrong
                await b.rate(out["answer_id"], False)
                out = await b.ask(f"{x} {y}")
                assert out["answer"] == own_answer(x)
                await b.rate(out["answer_id"], True)
            await h.settle()
            assert (await b.ask(unseen))["answer"] == plain_answer(unseen_decoy)
            await b.learn()
            status = b.learner_status()
            assert status["mu"] == max(learner.MUS) and status["lam"] == 0.0, status
            assert status["exposed"] == 0, status
            assert status["held_out"] == len(PLAIN) + len(decoyed), status
            got = await b.ask(unseen)
            assert got["answer"] == own_answer(unseen_word), [
                (s["text"], s["score"]) for s in got["sources"]]
            for w in PLAIN:
                assert (await b.ask(w))["answer"] == plain_answer(w)
    run(scenario)
