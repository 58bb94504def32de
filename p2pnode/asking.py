"""An ask as named stages that hand values forward (STYLE.md 12):

    embed          the embedding of the question's words  (compute thread,
      ├─ local     the nearest memories held here           one job)
      └─ lookup    the swarm's index entries near it       (p2pnode.swarm)
    fetch          the content worth fetching: not held here, not rejected
                   for this question, and the memories recalled by votes
                   (after a down vote: the shortlist and the fetch widened
                   by the number rejected, ordered by the moved question)
    learnt         cosines moved away from what was rejected for this
                   question and by what the learner earned (p2pnode.ranking.
                   learnt_cosines; trained by `learn` on its own thread)
    agents' say    their consensus, as far as their record earned it
    rank           one pure scoring of local and swarm candidates together
                   (p2pnode.ranking), rejected last, and the confidence
    record         the answer remembered for its rating (p2pnode.node)

`Spore.ask` composes them; nothing here calls back into the node. The
agents' record (who was right on rated answers, their shadow rankings) is
`AgentsRecord`, owned by the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agents import consensus, learner
from agents.encoder import Encoder, release_free_heap
from p2pnode.ranking import Candidate, Scored
from p2pnode.regions import question_text
from p2pnode.storage import MemoryRow

if TYPE_CHECKING:
    from dht.index import LocalIndex
    from p2pnode.agentnet import AgentNet, Verdict
    from p2pnode.records import MemoryRecord
    from p2pnode.storage import Reader
    from p2pnode.swarm import Found

__all__ = ["AGENT_CANDIDATES", "CANDIDATES", "LEARN_EVERY", "LEARN_REST", "MAX_SOURCES",
           "RECALLED_MAX", "REJECTED_FETCH_MAX",
           "AgentsRecord", "Query", "Say", "Seen", "embed", "embed_near", "from_swarm", "learn",
           "memory_json", "nearest", "training_set"]

log = logging.getLogger("spore.ask")
CANDIDATES = 32  # memories re-ranked per ask
AGENT_CANDIDATES = 12  # the best local ones the agents score (with the swarm's)
AGENT_WEIGHT = 0.5  # how much of the cosine the agents' consensus replaces, once earned
KINDS = (("familiar", True), ("novel", False))  # of questions, for the agents' record
AGENT_TRIAL = 20  # up votes the agents are judged on before they may have a say
RECALLED_MAX = 4  # memories rated up for questions like q: fetched anyway
MAX_SOURCES = 20
DUELS_KEPT = 4096
REJECTED_FETCH_MAX = 4  # rejected memories fetched per ask for their vectors alone
LEARN_EVERY = 50  # new votes in the book between two trainings of the learner
# After a training, rest this many times what it took before the next one:
# the learner takes at most a tenth of one core, however fast votes come (a
# flood of 8,400 votes in a minute trained it 40 times back to back, and the
# asks' p50 went 22 -> 73 ms: scripts/bench/hostile.py).
LEARN_REST = 9.0
# What one training may cost, whatever the votes: half the learner's default
# pairs, pool and held-out questions (the FAQ bench has 211 memories, 120
# questions, fewer net pairs: the same there): 2.9 s wall at 2,048 pairs (4.3 s
# at the defaults) on a shared 2-core machine under a load average of 15, one
# BLAS thread; RSS at its peak +27 MB at 1,024 pairs (+45 MB at 2,048 before
# the learner kept to float32: hostile.py's 250 MB under attack).
LIMITS = learner.Limits(max_pairs=1024, max_pool=1024, max_held=128)


@dataclass(frozen=True)
class Query:
    """A question as the ask ranks it: `vector`, the embedding of its words
    (p2pnode.regions.question_text), ranks by cosine and finds the votes
    cast on it; "How do I X?" and "how do i x" are one question to both."""

    text: str
    vector: np.ndarray = field(repr=False)


def embed(encoder: Encoder, text: str) -> Query:
    """Stage 1 (compute thread): one encoder call, on the question's words.
    Embedding the text as asked as well (for the ranking) cost a second
    call, the most of an ask at 100,000 memories (scripts/bench/ask.py):
    the words alone rank the Debian FAQ as well (scripts/bench/faq.py)."""
    words = question_text(text) or text
    return Query(text, np.asarray(encoder.embed([words])[0], dtype=np.float32))


def embed_near(encoder: Encoder, index: LocalIndex, reader: Reader, text: str,
               limit: int = CANDIDATES) -> tuple[Query, list[Candidate]]:
    """Stages 1 and 2a in one job of the compute thread (each hop to it and
    back costs about half a millisecond): the query, and its nearest."""
    query = embed(encoder, text)
    return query, nearest(index, reader, query.vector, limit)


def memory_json(r: MemoryRow) -> dict[str, Any]:
    return {"id": r.id.hex(), "question": r.question, "text": r.answer, "origin": r.origin,
            "author": r.author.hex(), "created_ms": r.created_ms}


def nearest(index: LocalIndex, reader: Reader, q: np.ndarray,
            limit: int = CANDIDATES) -> list[Candidate]:
    """Stage 2a (compute thread): the nearest `limit` memories held here, by
    the index, each with its cosine by its record's own embedding: the int8
    index finds them, the float16 embedding scores them, as a spore that
    fetches them from the swarm does (int8 here and float there differed by
    ~0.001 and flipped near-ties when one was adopted)."""
    if len(index) == 0:
        return []
    rows = index.search(q, limit)[0].tolist()
    held = reader.held_by_rows(rows)
    out = []
    for r in rows:
        if r not in held:  # gone between the index and the read: not an answer
            continue
        memory, vector = held[r]
        out.append(Candidate(memory.id, float(np.float32(vector @ q)), vector,
                             memory_json(memory), row=r))
    return out


def from_swarm(f: Found) -> Candidate:
    """A verified memory the swarm held, as a candidate like any other."""
    rec: MemoryRecord = f.record
    return Candidate(rec.id, float(np.float32(f.cosine)), rec.vector(),
                     {"id": rec.id.hex(), "question": rec.question, "text": rec.answer,
                      "origin": rec.origin, "author": rec.author.hex(),
                      "created_ms": rec.created_ms, "remote": True}, record=rec)


class Seen:
    """The vectors of the memories the latest asks here ranked (float16, the
    latest `cap`): the learner's pool of distractors, the vectors of most
    rated memories, and of those rejected (owned by the event loop)."""

    def __init__(self, cap: int = LIMITS.max_pool) -> None:
        self.cap = cap
        self._vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self._vectors

    def add(self, cands: Sequence[Candidate]) -> None:
        for c in cands:
            self._vectors[c.memory_id] = np.asarray(c.vector, np.float16)
            self._vectors.move_to_end(c.memory_id)
        while len(self._vectors) > self.cap:
            self._vectors.popitem(last=False)

    def vectors(self, memory_ids: Sequence[bytes]) -> list[np.ndarray]:
        return [self._vectors[m].astype(np.float32) for m in memory_ids if m in self._vectors]

    def snapshot(self) -> dict[bytes, np.ndarray]:
        """A copy for the compute thread (the arrays are never changed in place)."""
        return dict(self._vectors)


def training_set(memory_ids: Sequence[bytes], seen: dict[bytes, np.ndarray],
                 rows: dict[bytes, int], index: LocalIndex) -> tuple[list[int], np.ndarray]:
    """Which rated pairs can teach (compute thread: it owns the index): each
    memory's vector as an ask saw it, else as the index holds its row; a
    memory held nowhere here teaches nothing. (pair numbers, vectors)"""
    keep, answers = [], []
    for i, m in enumerate(memory_ids):
        vector = seen.get(m)
        if vector is None and m in rows:
            with contextlib.suppress(KeyError):
                vector = index.embedding(rows[m])
        if vector is not None:
            keep.append(i)
            answers.append(np.asarray(vector, np.float32))
    return keep, np.stack(answers) if answers else np.zeros((0, index.dim), np.float32)


def learn(questions: np.ndarray, answers: np.ndarray, signs: np.ndarray, pool: np.ndarray,
          limits: learner.Limits = LIMITS) -> tuple[learner.Learnt, int]:
    """The learner trained on rated pairs (the learner's own thread, never
    the loop nor the compute thread: at the caps it takes seconds on a busy
    2-core board). Bounded by `limits` whatever the votes; hostile rows are
    dropped by learner.ratings. (what was learnt, the pairs it learnt from)"""
    dim = answers.shape[1]
    if not len(answers):
        return learner.NOTHING_LEARNT, 0
    r = learner.ratings(questions, answers, signs, dim=dim, limits=limits)
    try:
        return learner.train(r, pool[-limits.max_pool:], limits=limits), len(r)
    finally:
        release_free_heap()  # what the training freed, back to the system


@dataclass
class Say:
    """The agents' part in one ask: their consensus when they had a say
    (`weight` > 0), else a shadow ranking still running (or nothing)."""

    weight: float = 0.0
    verdict: Verdict | None = None
    shadow: asyncio.Future[Verdict] | None = None
    familiar: bool = False

    @property
    def consensus(self) -> np.ndarray | None:
        return None if self.verdict is None else self.verdict.consensus


class AgentsRecord:
    """Whether the agents earned a say: per rated answer, their top-1 against
    the cosine's; on the last up votes, who was right (`weight`). Questions
    like ones people rated (familiar) and the others are judged apart."""

    def __init__(self) -> None:
        # Per answer: (agents' top-1 id, cosine's top-1 id, familiar).
        self._duels: OrderedDict[str, tuple[str, str, bool]] = OrderedDict()
        self._record: dict[bool, deque[tuple[bool, bool]]] = {
            True: deque(maxlen=200), False: deque(maxlen=200)}
        self._shadows: dict[str, asyncio.Task[None]] = {}  # answers the agents still rank

    def weight(self, familiar: bool) -> float:
        """The agents' say in the ranking, earned: none until they have been
        judged on AGENT_TRIAL up votes here, and none while they rank the
        answers people rated up first no more often than the plain cosine does
        (over the last ratings). Meanwhile they rank in the shadow: their pick
        is recorded against the cosine's, so the record keeps growing. A fresh
        population is the encoder plus noise (its scores sit 0.01-0.03 off the
        cosine), and noise must not cost the questions nobody rated.

        Familiar questions and the others are judged apart: agents that learnt
        the rated questions beat the cosine there, and that says nothing of
        questions nobody rated (on the FAQ, a say won on the first kind turned
        4 of 60 unseen questions wrong). On a question nobody rated they have
        no say at all, earned or not: their learning comes from votes on other
        questions, and that must not reorder this one's candidates (a
        never-rated question's right answer led by 0.0002 and the agents'
        learning moved scores by ~0.0005). Their record on such questions is
        still kept (`status`)."""
        if not familiar:
            return 0.0
        return consensus.earned_weight(self._record[familiar], AGENT_TRIAL, AGENT_WEIGHT)

    async def consult(self, agents: AgentNet | None, q: np.ndarray,
                      cands: Sequence[Candidate], familiar: bool) -> Say:
        """Stage 4: the agents' consensus over the candidates if they earned a
        say; else their ranking started in the shadow, off the answer's path."""
        if agents is None or len(cands) < 2:
            return Say(familiar=familiar)
        weight = self.weight(familiar)
        vecs = np.stack([c.vector for c in cands])
        if weight > 0:
            return Say(weight, await agents.rank(q, vecs), familiar=familiar)
        return Say(weight, shadow=asyncio.ensure_future(agents.rank(q, vecs)),
                   familiar=familiar)

    def judged(self, agents: AgentNet | None, answer_id: str, q: np.ndarray,
               ranked: Sequence[Scored], say: Say) -> None:
        """Record an answer's agents (their credit, for its rating) and their
        pick against the cosine's (for their record), now or once the shadow
        ranking is done."""
        if agents is None or not ranked:
            return
        by_order = sorted(ranked, key=lambda s: s.index)  # the order the agents scored
        ids = [s.candidate.source["id"] for s in by_order]
        by_cosine = max(by_order, key=lambda s: s.candidate.cosine).candidate.source["id"]
        best = ranked[0]
        if say.verdict is not None:
            self._judged(agents, answer_id, q, best, ids, by_cosine, say.familiar, say.verdict)
        elif say.shadow is not None:
            self._shadows[answer_id] = task = asyncio.ensure_future(self._judge_later(
                agents, answer_id, q, best, ids, by_cosine, say.familiar, say.shadow))
            task.add_done_callback(lambda _t: self._shadows.pop(answer_id, None))

    def _judged(self, agents: AgentNet, answer_id: str, q: np.ndarray, best: Scored,
                ids: list[str], by_cosine: str, familiar: bool, verdict: Verdict) -> None:
        agents.remember(answer_id, q, best.candidate.vector, verdict, best.index)
        self._duels[answer_id] = (ids[int(np.argmax(verdict.consensus))], by_cosine, familiar)
        while len(self._duels) > DUELS_KEPT:
            self._duels.popitem(last=False)

    async def _judge_later(self, agents: AgentNet, answer_id: str, q: np.ndarray,
                           best: Scored, ids: list[str], by_cosine: str, familiar: bool,
                           shadow: asyncio.Future[Verdict]) -> None:
        try:
            verdict = await shadow
        except Exception as exc:  # a shadow ranking that failed costs its record only
            log.warning("agents' shadow ranking failed: %s", exc)
            return
        self._judged(agents, answer_id, q, best, ids, by_cosine, familiar, verdict)

    async def settled(self, answer_id: str) -> None:
        """Wait for the shadow ranking of an answer, if it still runs."""
        pending = self._shadows.get(answer_id)
        if pending is not None:
            await asyncio.wait([pending])

    def rated(self, answer_id: str, up: bool, memory_id: bytes) -> None:
        """An answer's rating: on an up vote, the right answer is known: who had it first?"""
        duel = self._duels.pop(answer_id, None)
        if up and duel is not None:
            self._record[duel[2]].append((duel[0] == memory_id.hex(),
                                          duel[1] == memory_id.hex()))

    def status(self) -> dict[str, Any]:
        return {"weight": {kind: self.weight(k) for kind, k in KINDS},
                "record": {kind: {"agents_right": sum(a for a, _ in self._record[k]),
                                  "cosine_right": sum(c for _, c in self._record[k]),
                                  "of": len(self._record[k])} for kind, k in KINDS}}
