"""What people said about memories, by the question they said it for.

A vote is about an answer *to a question* (DESIGN.md section 3): each keeps
its question's embedding, taken of the question's text without case,
punctuation or spacing (`question_text`), and is kept under a region that is
that very question (`region_key`): two questions never share a counter. What
a vote says counts only for the same question (`agents.consensus.
region_weights`); an up vote on a question like this one only brings its
memory in as a candidate (`RegionIndex.said`: recalled). Whatever its
counters claim, a voter is one voice per memory, here as in the overall
fitness (crdt.votes.voices): one key cannot bury or lift an answer alone.
No locks: each instance belongs to one thread of the node (see p2pnode.node).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from agents import consensus
from crdt.votes import Counter, VoteKey, fitness, stance, voices

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
    """The votes on one memory, as the ranking needs them. Questions are kept
    as their compact int8 codes and scale (~0.5 KB a vote, not 1.5 KB)."""

    counters: dict[VoteKey, Counter] = field(default_factory=dict)
    questions: dict[VoteKey, tuple[np.ndarray, float]] = field(default_factory=dict)

    def region_fitness(self, query: np.ndarray) -> float:
        """Fitness from the votes cast on this very question, one per voter."""
        keys = [k for k in self.counters if k in self.questions]
        if not keys:
            return 0.0
        codes = np.stack([self.questions[k][0] for k in keys]).astype(np.float32)
        scales = np.array([self.questions[k][1] for k in keys], np.float32)
        w = consensus.region_weights(query, codes * scales[:, None])
        return fitness(*voices({k: self.counters[k] for k, wi in zip(keys, w, strict=True)
                                if wi > 0}))

    def overall(self) -> float:
        return fitness(*voices(self.counters))


class RegionIndex:
    """Every gossiped vote's question embedding in one matrix: what people said
    about each memory for questions like q, in one product per ask, and the
    voices counted in numpy (a flood of votes on one question costs an ask
    milliseconds, not a Python loop per vote)."""

    def __init__(self, dim: int) -> None:
        self._row: dict[tuple[bytes, VoteKey], int] = {}
        self._ids: dict[bytes, int] = {}  # memory ids and voter keys, as small ints
        self._names: list[bytes] = []
        self._q = np.zeros((0, dim), np.float32)
        self._who = np.zeros(0, np.int64)  # memory id << 32 | voter id, per row
        self._stance = np.zeros(0, np.int8)  # crdt.votes.stance of each entry

    def _id(self, name: bytes) -> int:
        got = self._ids.get(name)
        if got is None:
            got = self._ids[name] = len(self._names)
            self._names.append(name)
        return got

    def put(self, memory_id: bytes, key: VoteKey, q: np.ndarray, c: Counter) -> None:
        row = self._row.get((memory_id, key))
        if row is None:
            row = self._row[(memory_id, key)] = len(self._row)
            if row >= len(self._q):  # grow by doubling
                grow = max(64, len(self._q))
                self._q = np.concatenate([self._q, np.zeros((grow, self._q.shape[1]),
                                                             np.float32)])
                self._who = np.concatenate([self._who, np.zeros(grow, np.int64)])
                self._stance = np.concatenate([self._stance, np.zeros(grow, np.int8)])
            self._who[row] = self._id(memory_id) << 32 | self._id(key[0])
        self._q[row] = q
        self._stance[row] = stance(c)

    def said(self, q: np.ndarray, recall_max: int) -> Said:
        """Region fitness (consensus.region_weights, votes.fitness) per memory
        with votes on this very question, and up to `recall_max` memories rated
        up (net) for questions like it (consensus.near_questions), best first.
        Each voter is one voice per memory in both."""
        n = len(self._row)
        if n == 0:
            return Said({}, [])
        same = self._voices(np.nonzero(consensus.region_weights(q, self._q[:n]) > 0)[0])
        near = self._voices(np.nonzero(consensus.near_questions(q, self._q[:n]))[0])
        ups = {m: up - down for m, (up, down) in near.items()}
        recalled = sorted((m for m, net in ups.items() if net > 0), key=lambda m: -ups[m])
        return Said({m: fitness(*counts) for m, counts in same.items()}, recalled[:recall_max])

    def _voices(self, rows: np.ndarray) -> dict[bytes, tuple[int, int]]:
        """memory → (up, down) voices over `rows`: a voter's entries together
        are one voice, by the sign of their stances' sum."""
        if len(rows) == 0:
            return {}
        pairs, at = np.unique(self._who[rows], return_inverse=True)
        says = np.sign(np.bincount(at.ravel(), weights=self._stance[rows], minlength=len(pairs)))
        memories, of = np.unique(pairs >> 32, return_inverse=True)
        up = np.bincount(of.ravel(), weights=says > 0, minlength=len(memories))
        down = np.bincount(of.ravel(), weights=says < 0, minlength=len(memories))
        return {self._names[int(m)]: (int(u), int(d))
                for m, u, d in zip(memories, up, down, strict=True)}
