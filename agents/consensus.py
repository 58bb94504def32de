"""Consensus: turn candidate scores and memory fitness into a ranking (pure).

The ranking is the encoder's cosine, moved by what people said about each
memory for this very question (its *region*: the same question, see
SAME_QUESTION) and, on such questions only, by the agents' consensus as far
as their record has earned them a say (`earned_weight`). Nothing said about
other questions reorders this one's candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PRIOR", "REGION_FLOOR", "REJECTED_BELOW", "SAME_QUESTION", "Calibration", "Ranking",
           "combine", "confidence", "earned_weight", "fit_calibration", "near_questions",
           "region_weights", "rejected"]

# How far a rating moves a memory: one up vote on the same question adds
# 0.4 * 0.33 ≈ 0.13 to its cosine; a down vote there demotes it
# (REJECTED_BELOW). What
# people said of a memory for *other* questions (its overall fitness) does not
# move it: at a weight of 0.01, then 0.002, it only broke
# near-ties of never-rated FAQ questions (cosines within 0.001): 7 turned
# wrong, 1 right over five runs of learning.py. The term stays, at zero.
REGION_WEIGHT = 0.4
OVERALL_WEIGHT = 0.0
# A vote counts for a question only if it was cast on the same question:
# cosine >= SAME_QUESTION between the two questions' embeddings (taken of
# their text without case, punctuation or spacing, p2pnode.regions). Any
# lower floor carries votes across questions that merely sound alike: "How do
# I convert a number to a string?" is at 0.990 of "...a string to a number?"
# and at 0.991 of itself without its "?"; "copy files from A to B" at 0.989 of
# "from B to A". On the FAQ a rated question at 0.88 or 0.895 lifted its
# neighbour's answer over a never-rated question's right one, and a vote
# sharing an LSH bucket with another question acted on it at cosine 0.25.
# 0.999 leaves room for the int8 rounding of a vote's stored question (~1e-4).
SAME_QUESTION = 0.999
# Up votes on questions from this cosine upward (but not the same question)
# only bring their memory in as a candidate, ranked by its own cosine like any
# other (recall, p2pnode.node); they never move a score or demote.
REGION_FLOOR = 0.85
# After a down vote, try something else: a memory whose region fitness is at
# or below this (one down vote and no up vote on this very question: -0.33)
# ranks after every memory people did not reject for it, whatever its cosine
# (its score stays what it is: the confidence compares the answer with a
# rejected runner-up as it is). The swarm does not even fetch such memories
# (p2pnode.node). Before, a down vote moved a memory by 0.13 of cosine only,
# and the next ask of that question (on any spore) had a new top-1 in 85-91 %
# of cases (scripts/bench/learning.py, diagnosis).
REJECTED_BELOW = -0.2


def rejected(region_fitness: np.ndarray | float) -> np.ndarray:
    """Whether people rejected a memory for this question (see REJECTED_BELOW)."""
    return np.asarray(region_fitness) <= REJECTED_BELOW


@dataclass(frozen=True)
class Ranking:
    order: np.ndarray  # indices into the candidates, best first
    scores: np.ndarray  # combined score, aligned with `order`
    confidence: float


def region_weights(query: np.ndarray, vote_questions: np.ndarray) -> np.ndarray:
    """Whether each vote's question is this very question (1.0) or not (0.0)."""
    if len(vote_questions) == 0:
        return np.zeros(0, dtype=np.float32)
    same: np.ndarray = (vote_questions @ query >= SAME_QUESTION).astype(np.float32)
    return same


def near_questions(query: np.ndarray, vote_questions: np.ndarray) -> np.ndarray:
    """Which votes' questions are like this one (REGION_FLOOR): recall only."""
    if len(vote_questions) == 0:
        return np.zeros(0, dtype=bool)
    near: np.ndarray = vote_questions @ query >= REGION_FLOOR
    return near


def combine(
    cosines: np.ndarray, overall_fitness: np.ndarray, region_fitness: np.ndarray
) -> Ranking:
    """Rank candidates by cosine + fitness terms; all arrays aligned. Those
    rejected for this question (REJECTED_BELOW) come last."""
    region = region_fitness.astype(np.float32)
    scores = (
        cosines.astype(np.float32)
        + REGION_WEIGHT * region
        + OVERALL_WEIGHT * overall_fitness.astype(np.float32)
    )
    order = np.lexsort((-scores, rejected(region)))  # stable, as argsort was
    ranked = scores[order]
    runner_up = float(ranked[1]) if len(ranked) > 1 else 0.0
    top = float(ranked[0]) if len(ranked) else 0.0
    return Ranking(order, ranked, confidence(top, runner_up) if len(ranked) else 0.0)


# Logistic calibration of P(top answer is right) on the top score and its
# margin over the runner-up, fitted by `scripts/bench/faq.py --calibrate` on
# the Debian FAQ (120 questions; Brier 0.225 against 0.250 for a constant).
# The margin carries most of the signal; the README has the reliability table.
# It is the prior: each spore refits it on its own ratings (`fit_calibration`).
_CAL_BIAS = -0.75
_CAL_TOP = 0.61
_CAL_MARGIN = 5.17
CAL_PRIOR_STRENGTH = 10.0  # ratings' worth of belief in the prior, per coefficient
CAL_LIMIT = 40.0  # no coefficient moves beyond this (a stream of one outcome)


@dataclass(frozen=True)
class Calibration:
    """P(top answer is right) = σ(bias + top·score + margin·(score − runner-up))."""

    bias: float = _CAL_BIAS
    top: float = _CAL_TOP
    margin: float = _CAL_MARGIN

    def __call__(self, top: float, runner_up: float) -> float:
        z = self.bias + self.top * top + self.margin * (top - runner_up)
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))))

    def vector(self) -> np.ndarray:
        return np.array([self.bias, self.top, self.margin], dtype=np.float64)


PRIOR = Calibration()


def confidence(top: float, runner_up: float) -> float:
    return PRIOR(top, runner_up)


def fit_calibration(samples: Sequence[tuple[float, float, bool]],
                    prior: Calibration = PRIOR, strength: float = CAL_PRIOR_STRENGTH,
                    steps: int = 12) -> Calibration:
    """Refit the calibration on rated answers (top score, runner-up score, rated
    up): logistic regression with a Gaussian prior centred on `prior` (a MAP
    estimate by Newton steps), so a few ratings move it a little and many
    ratings decide. People rate the answer they got: an up vote says the top
    answer was right, a down vote that it was not — exactly what the
    confidence claims to predict."""
    if not samples:
        return prior
    data = np.asarray([(1.0, t, t - r) for t, r, _ in samples], dtype=np.float64)
    if not np.isfinite(data).all():
        raise ValueError("calibration samples must be finite")
    y = np.asarray([float(up) for _, _, up in samples])
    w0 = prior.vector()
    w = w0.copy()
    eye = np.eye(3) * strength
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(data @ w, -60.0, 60.0)))
        grad = data.T @ (p - y) + strength * (w - w0)
        hess = (data * (p * (1.0 - p))[:, None]).T @ data + eye
        step = np.linalg.solve(hess, grad)
        w = np.clip(w - step, -CAL_LIMIT, CAL_LIMIT)
        if float(np.abs(step).max()) < 1e-6:
            break
    return Calibration(float(w[0]), float(w[1]), float(w[2]))

def earned_weight(record: Sequence[tuple[bool, bool]], trial: int, full: float) -> float:
    """The agents' say, from their record of (agents' pick right, cosine's
    pick right) on rated-up answers: none before `trial` of them, `full` while
    the agents were right strictly more often than the cosine, else none."""
    if len(record) < trial:
        return 0.0
    agents = sum(a for a, _ in record)
    cosine = sum(c for _, c in record)
    return full if agents > cosine else 0.0
