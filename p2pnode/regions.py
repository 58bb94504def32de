"""What people said about memories, by the question they said it for.

A vote is about an answer *to a question* (DESIGN.md section 3): each keeps
its question's embedding, and what it says counts for another question as
far as the two questions are alike (`agents.consensus.region_weights`). No
locks: each instance belongs to one thread of the node (see p2pnode.node).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agents import consensus
from crdt.votes import Counter, VoteKey, fitness, tally

__all__ = ["MemoryVotes", "RegionIndex"]


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

    def fitness(self, q: np.ndarray) -> dict[bytes, float]:
        """Region fitness (consensus.region_weights, votes.fitness) per memory
        that has votes on questions like q."""
        n = len(self._memory)
        if n == 0:
            return {}
        w = consensus.region_weights(q, self._q[:n])
        rows = np.nonzero(w > 0)[0]
        sums: dict[bytes, list[float]] = {}
        for r in rows:
            acc = sums.setdefault(self._memory[r], [0.0, 0.0])
            acc[0] += float(w[r] * self._counts[r, 0])
            acc[1] += float(w[r] * self._counts[r, 1])
        return {m: fitness(up, down) for m, (up, down) in sums.items()}
