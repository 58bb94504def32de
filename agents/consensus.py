"""Consensus: turn candidate scores and memory fitness into a ranking (pure).

The agents of a later issue add their scores here; today the ranking is the
encoder's cosine, moved by what people said about each memory — most of all
what they said about it for questions like this one (its *region*), a little
for what they said overall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Ranking", "combine", "confidence", "region_weights"]

# How far a rating moves a memory: one down vote on the same question costs
# 0.4 * 0.33 ≈ 0.13 of cosine, enough to let the runner-up through in most
# cases; votes from elsewhere count a fortieth as much.
REGION_WEIGHT = 0.4
OVERALL_WEIGHT = 0.01
# A vote's question counts for this question from this cosine upward. On the
# Debian FAQ, 64 of 120 questions have a *different* question above 0.6 and 2
# above 0.85: a lower floor carried votes to questions they were not about
# (scripts/bench/learning.py, "do no harm").
REGION_FLOOR = 0.85


@dataclass(frozen=True)
class Ranking:
    order: np.ndarray  # indices into the candidates, best first
    scores: np.ndarray  # combined score, aligned with `order`
    confidence: float


def region_weights(query: np.ndarray, vote_questions: np.ndarray) -> np.ndarray:
    """How much each vote's question is "this question" (0..1, by cosine)."""
    if len(vote_questions) == 0:
        return np.zeros(0, dtype=np.float32)
    sims = vote_questions @ query
    weights: np.ndarray = np.clip((sims - REGION_FLOOR) / (1.0 - REGION_FLOOR), 0.0, 1.0)
    return weights


def combine(
    cosines: np.ndarray, overall_fitness: np.ndarray, region_fitness: np.ndarray
) -> Ranking:
    """Rank candidates by cosine + fitness terms; all arrays aligned."""
    scores = (
        cosines.astype(np.float32)
        + REGION_WEIGHT * region_fitness.astype(np.float32)
        + OVERALL_WEIGHT * overall_fitness.astype(np.float32)
    )
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    runner_up = float(ranked[1]) if len(ranked) > 1 else 0.0
    top = float(ranked[0]) if len(ranked) else 0.0
    return Ranking(order, ranked, confidence(top, runner_up) if len(ranked) else 0.0)


# Logistic calibration of P(top answer is right) on the top score and its
# margin over the runner-up, fitted by `scripts/bench/faq.py --calibrate` on
# the Debian FAQ (120 questions; Brier 0.225 against 0.250 for a constant).
# The margin carries most of the signal; the README has the reliability table.
_CAL_BIAS = -0.75
_CAL_TOP = 0.61
_CAL_MARGIN = 5.17


def confidence(top: float, runner_up: float) -> float:
    z = _CAL_BIAS + _CAL_TOP * top + _CAL_MARGIN * (top - runner_up)
    return float(1.0 / (1.0 + np.exp(-z)))
