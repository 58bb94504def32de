"""The ranking of memories by cosine and by what people said (agents.consensus)."""

from __future__ import annotations

import numpy as np

from agents.consensus import REJECTED_BELOW, combine, region_weights
from crdt.votes import fitness


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x)).astype(np.float32)


def _region_fitness(query: np.ndarray, vote_question: np.ndarray, up: int, down: int) -> float:
    """One memory's votes, all cast on `vote_question`, as seen from `query`."""
    w = float(region_weights(query, vote_question[None, :])[0])
    return fitness(w * up, w * down)


def _ranked(cosines: list[float], region: list[float]) -> list[int]:
    n = len(cosines)
    return [int(i) for i in combine(np.array(cosines), np.zeros(n), np.array(region)).order]


def test_a_down_vote_on_this_question_tries_something_else() -> None:
    q = _unit(np.arange(1.0, 9.0))
    region = _region_fitness(q, q, up=0, down=1)
    assert region <= REJECTED_BELOW
    # far ahead by cosine (a gap the region term alone, 0.4 * 0.33, cannot close)
    assert _ranked([0.9, 0.3, 0.2], [region, 0.0, 0.0]) == [1, 2, 0]


def test_a_down_vote_outweighed_by_up_votes_does_not_demote() -> None:
    q = _unit(np.arange(1.0, 9.0))
    region = _region_fitness(q, q, up=2, down=1)
    assert region > REJECTED_BELOW
    assert _ranked([0.9, 0.3], [region, 0.0]) == [0, 1]


def test_a_down_vote_on_a_merely_similar_question_only_moves_it() -> None:
    q = _unit(np.arange(1.0, 9.0))
    side = np.zeros(8, np.float32)
    side[0], side[1] = q[1], -q[0]  # orthogonal to q
    other = 0.9 * q + np.sqrt(1 - 0.9**2) * _unit(side)  # at cosine 0.9: its vote counts a third
    assert abs(float(other @ q) - 0.9) < 1e-5
    region = _region_fitness(q, other, up=0, down=1)
    assert REJECTED_BELOW < region < 0
    assert _ranked([0.9, 0.3], [region, 0.0]) == [0, 1]  # moved, not demoted
    assert _ranked([0.35, 0.3], [region, 0.0]) == [1, 0]  # a near runner-up goes ahead


def test_a_rejected_runner_up_does_not_make_the_answer_look_certain() -> None:
    q = _unit(np.arange(1.0, 9.0))
    rejected = _region_fitness(q, q, up=0, down=1)
    alone = combine(np.array([0.2]), np.zeros(1), np.zeros(1))
    ranking = combine(np.array([0.9, 0.2]), np.zeros(2), np.array([rejected, 0.0]))
    assert [int(i) for i in ranking.order] == [1, 0]
    # scores stay cosine + region term: the demotion is in the order only
    np.testing.assert_allclose(ranking.scores, [0.2, 0.9 + 0.4 * rejected], rtol=1e-6)
    assert ranking.confidence < min(alone.confidence, 0.5)
