"""What people said about memories, by the question they said it for.

A vote is about an answer *to a question* (DESIGN.md section 3): each keeps
its question's embedding, taken of the question's text without case,
punctuation or spacing (`question_text`), and is kept under a region that is
that very question (`region_key`): two questions never share a counter. What
a vote says counts only for the same question (`agents.consensus.
region_weights`); an up vote on a question like this one only brings its
memory in as a candidate (`RegionIndex.said`: recalled). No locks: each
instance belongs to one thread of the node (see p2pnode.node).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from agents import consensus
from crdt.votes import Counter, VoteKey, fitness, tally

__all__ = ["MemoryVotes", "RegionIndex", "Said", "question_text", "region_key"]

REGION_DOMAIN = b"sporemind/question-region/v1"
_END_MARKS = "?!.,;:¿¡…\"'«»“”‘’()[] \t\n"


def question_text(question: str) -> str:
    """What makes two questions the same question: their words, whatever the
    case, the spacing and the marks around them ("How do I X?" = "how do i
    x"); marks inside stay ("C++ vs C#?" is not "C vs C")."""
    return " ".join(question.casefold().split()).strip(_END_MARKS)


def region_key(qvec: bytes) -> bytes:
    """A vote's region: its question itself (the hash of its compact embedding).
    An LSH bucket, before, made one counter of different questions that
    shared it: a vote for one question then acted on the other."""
    return hashlib.sha256(REGION_DOMAIN + qvec).digest()


@dataclass(frozen=True)
class Said:
    """What people said near one question: region fitness per memory (votes on
    this very question) and memories rated up for questions like it."""

    fitness: dict[bytes, float]
    recalled: list[bytes]


@dataclass
class MemoryVotes:
    """The votes on one memory, as the ranking needs them."""

    counters: dict[VoteKey, Counter] = field(default_factory=dict)
    questions: dict[VoteKey, np.ndarray] = field(default_factory=dict)

    def region_fitness(self, query: np.ndarray) -> float:
        keys = list(self.counters)
        qs = np.stack([self.questions[k] for k in keys])
        w = consensus.region_weights(query, qs)
        up = sum(wi * self.counters[k].up for wi, k in zip(w, keys, strict=True))
        down = sum(wi * self.counters[k].down for wi, k in zip(w, keys, strict=True))
        return fitness(float(up), float(down))

    def overall(self) -> float:
        return fitness(*tally(self.counters.values()))


class RegionIndex:
    """Every gossiped vote's question embedding in one matrix: what people said
    about each memory for questions like q, in one product per ask."""

    def __init__(self, dim: int) -> None:
        self._row: dict[tuple[bytes, VoteKey], int] = {}
        self._memory: list[bytes] = []
        self._q = np.zeros((0, dim), np.float32)
        self._counts = np.zeros((0, 2), np.float32)  # up, down

    def put(self, memory_id: bytes, key: VoteKey, q: np.ndarray, c: Counter) -> None:
        row = self._row.get((memory_id, key))
        if row is None:
            row = self._row[(memory_id, key)] = len(self._memory)
            self._memory.append(memory_id)
            if row >= len(self._q):  # grow by doubling
                grow = max(64, len(self._q))
                self._q = np.concatenate([self._q, np.zeros((grow, self._q.shape[1]),
                                                             np.float32)])
                self._counts = np.concatenate([self._counts, np.zeros((grow, 2), np.float32)])
        self._q[row] = q
        self._counts[row] = (c.up, c.down)

    def said(self, q: np.ndarray, recall_max: int) -> Said:
        """Region fitness (consensus.region_weights, votes.fitness) per memory
        with votes on this very question, and up to `recall_max` memories rated
        up (net) for questions like it (consensus.near_questions), best first."""
        n = len(self._memory)
        if n == 0:
            return Said({}, [])
        same = consensus.region_weights(q, self._q[:n])
        near = consensus.near_questions(q, self._q[:n])
        sums: dict[bytes, list[float]] = {}
        for r in np.nonzero(same > 0)[0]:
            acc = sums.setdefault(self._memory[r], [0.0, 0.0])
            acc[0] += float(same[r] * self._counts[r, 0])
            acc[1] += float(same[r] * self._counts[r, 1])
        ups: dict[bytes, float] = {}
        for r in np.nonzero(near)[0]:
            m = self._memory[r]
            ups[m] = ups.get(m, 0.0) + float(self._counts[r, 0] - self._counts[r, 1])
        recalled = sorted((m for m, net in ups.items() if net > 0), key=lambda m: -ups[m])
        return Said({m: fitness(up, down) for m, (up, down) in sums.items()},
                    recalled[:recall_max])
