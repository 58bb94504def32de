"""Evolution policy, pure: credit, learning, who divides, who dies (DESIGN.md §6).

Plain functions over arrays and small values; the colony (p2pnode.colony)
applies them on its compute thread and keeps the books.

* **Credit**: after a rating, each agent that took part is credited by how
  much it preferred the rated memory over the other candidates: the z-score
  of its score for it among its own scores, clipped to [-1, 1].
* **Learning**: one small step of the output layer along ±∇cos(r(q), memory).
* **Selection**: a rating lets at most one agent divide: the fittest of
  those that earned `threshold` good ratings since their last division,
  and only if it stands among the fittest `ELITE` share of the population
  (not below its mean). Before, every agent that took part divided after 20
  good ratings: ~1,400 divisions per 1,000 ratings, churn rather than
  selection. Over the cap, the least fit die (a guest before one of ours,
  the latest arrival first); the long idle die too, never the last one.
* **Children**: a child is its parent's *stored* weights plus N(0, σ²)
  drawn from a seed (`derive`), so a child that has not learnt yet is
  stored as (parent's weights, seed, σ) and re-derived bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agents.genome import Weights, mutate
from agents.pool import combine

__all__ = ["ELITE", "LEARNING_RATE", "Member", "Scored", "credits", "culled", "derive", "learn",
           "parent", "standing"]

LEARNING_RATE = 0.01  # per rating: hundreds of ratings must not carry an agent far
ELITE = 0.125  # the share of the population (the fittest) whose members may divide


@dataclass(frozen=True)
class Member:
    """What the policy needs to know of one agent."""

    agent_id: bytes
    fitness: float
    good: int = 0  # good ratings since its birth or its last division
    guest: bool = False  # a peer's child hosted here
    joined_ms: int = 0  # its arrival here, on our clock
    last_used_ms: int = 0


@dataclass(frozen=True)
class Scored:
    """One pool run: agent ids, their fitness, and scores [A, C]."""

    ids: tuple[bytes, ...]
    fitness: np.ndarray
    scores: np.ndarray

    def consensus(self) -> np.ndarray:
        """The fitness-weighted mean of the agents' scores. Fitness is unbounded
        (credits add up), so it is taken relative to its spread: the fittest
        agents count more, but one old agent never silences all the others."""
        if not self.ids:
            return np.zeros(0, np.float32)
        spread = float(np.std(self.fitness)) if len(self.fitness) > 1 else 0.0
        return combine(self.scores, self.fitness, temperature=max(1.0, spread))


def credits(scores: np.ndarray, chosen: int) -> np.ndarray:
    """How much each agent (row) preferred candidate `chosen` over the others:
    its score's z-score among that agent's scores, clipped to [-1, 1]."""
    if scores.shape[1] < 2:
        return np.zeros(scores.shape[0], dtype=np.float32)
    mean = scores.mean(axis=1)
    std = scores.std(axis=1) + 1e-6
    out: np.ndarray = np.clip((scores[:, chosen] - mean) / std, -1.0, 1.0).astype(np.float32)
    return out


def learn(w: Weights, q: np.ndarray, memory: np.ndarray, sign: float,
          rate: float = LEARNING_RATE) -> Weights:
    """One step of the output layer along ±∇ cos(r(q), memory) (W2 and b2 only:
    W1 stays the random projection every lineage shares)."""
    h = np.tanh(q @ w.w1 + w.b1)
    r = q + h @ w.w2 + w.b2
    norm = float(np.linalg.norm(r)) + 1e-9
    grad = memory / norm - float(r @ memory) * r / norm**3  # ∂cos/∂r
    step = (sign * rate * grad).astype(np.float32)
    return Weights(w.w1, w.b1, (w.w2 + np.outer(h, step)).astype(np.float32),
                   (w.b2 + step).astype(np.float32))


def derive(weights: Weights, steps: Sequence[tuple[int, float]]) -> Weights:
    """Weights after mutations (seed, σ), in order: a child re-derived bit for bit."""
    for seed, sigma in steps:
        weights = mutate(weights, sigma, np.random.default_rng(seed))
    return weights


def parent(members: Sequence[Member], threshold: int, elite: float = ELITE) -> bytes | None:
    """The one agent that divides now, if any: the fittest of those among the
    fittest `elite` share of the population (at least one agent), positive,
    not below the population's mean (agents that all scored alike tie), with
    `threshold` good ratings since their last division."""
    if not members:
        return None
    ranked = sorted(members, key=lambda m: (-m.fitness, m.agent_id))
    mean = sum(m.fitness for m in members) / len(members)
    top = ranked[:max(1, math.ceil(elite * len(members)))]
    for m in top:
        if m.good >= threshold and m.fitness > 0 and m.fitness >= mean:
            return m.agent_id
    return None


def standing(m: Member) -> tuple[float, bool, int, bytes]:
    """Who dies first (the smallest): the least fit as measured here, a guest
    before one of ours, the latest arrival here."""
    return (m.fitness, not m.guest, -m.joined_ms, m.agent_id)


def culled(members: Sequence[Member], cap: int, now_ms: int, idle_ms: int
           ) -> list[tuple[bytes, str]]:
    """Who dies, and why: the long idle (never the last one), then the least
    fit until the population fits its cap."""
    alive = list(members)
    out: list[tuple[bytes, str]] = []
    for m in members:
        if len(alive) > 1 and now_ms - m.last_used_ms > idle_ms:
            alive.remove(m)
            out.append((m.agent_id, "idle"))
    alive.sort(key=standing)
    while len(alive) > cap:
        out.append((alive.pop(0).agent_id, "least fit"))
    return out
