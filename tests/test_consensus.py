"""The ranking of memories by cosine and by what people said (agents.consensus)."""

from __future__ import annotations

import numpy as np

from agents.consensus import REJECTED_BELOW, combine, region_weights
from crdt.votes import Counter, fitness
from p2pnode.regions import RegionIndex, question_text, region_key


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


def _at(q: np.ndarray, cosine: float) -> np.ndarray:
    """A unit vector at `cosine` of q."""
    side = np.zeros(len(q), np.float32)
    side[0], side[1] = q[1], -q[0]  # orthogonal to q
    other = cosine * q + np.sqrt(1 - cosine**2) * _unit(side)
    assert abs(float(other @ q) - cosine) < 1e-5
    return other.astype(np.float32)


def test_a_vote_on_another_question_does_not_move_this_one_however_alike() -> None:
    """'How do I convert a number to a string?' is at 0.990 of '...a string to
    a number?': a vote on one must say nothing of the other's answers."""
    q = _unit(np.arange(1.0, 9.0))
    for cosine in (0.25, 0.85, 0.9, 0.99, 0.998):
        assert _region_fitness(q, _at(q, cosine), up=0, down=1) == 0.0
        assert _region_fitness(q, _at(q, cosine), up=3, down=0) == 0.0
    assert _region_fitness(q, _at(q, 0.9995), up=0, down=1) <= REJECTED_BELOW  # int8 rounding


def test_votes_on_questions_like_this_one_only_recall_what_was_rated_up() -> None:
    q = _unit(np.arange(1.0, 9.0))
    index = RegionIndex(8)
    voter = b"v" * 32
    index.put(b"same-down", (voter, b"r1"), q, Counter(1, 0, 1))
    index.put(b"near-up", (voter, b"r2"), _at(q, 0.9), Counter(1, 1, 0))
    index.put(b"near-down", (voter, b"r3"), _at(q, 0.9), Counter(1, 0, 1))
    index.put(b"far-up", (voter, b"r4"), _at(q, 0.5), Counter(1, 1, 0))
    said = index.said(q, recall_max=4)
    assert set(said.fitness) == {b"same-down"} and said.fitness[b"same-down"] < 0
    assert said.recalled == [b"near-up"]
    assert index.said(q, recall_max=0).recalled == []


def test_the_same_question_is_its_words_whatever_the_case_and_marks() -> None:
    assert question_text("  How do I  convert a number to a string?") == \
        question_text("how do i convert a number to a string")
    assert question_text("C++ vs C#?") == "c++ vs c#"  # marks inside stay
    assert question_text("string to a number?") != question_text("number to a string?")
    assert region_key(b"a") != region_key(b"b") and len(region_key(b"a")) == 32


def test_a_rejected_runner_up_does_not_make_the_answer_look_certain() -> None:
    q = _unit(np.arange(1.0, 9.0))
    rejected = _region_fitness(q, q, up=0, down=1)
    alone = combine(np.array([0.2]), np.zeros(1), np.zeros(1))
    ranking = combine(np.array([0.9, 0.2]), np.zeros(2), np.array([rejected, 0.0]))
    assert [int(i) for i in ranking.order] == [1, 0]
    # scores stay cosine + region term: the demotion is in the order only
    np.testing.assert_allclose(ranking.scores, [0.2, 0.9 + 0.4 * rejected], rtol=1e-6)
    assert ranking.confidence < min(alone.confidence, 0.5)
