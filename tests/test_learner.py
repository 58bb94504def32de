"""Learning from ratings where votes cannot act (agents.learner): the learnt
mapping and taken_elsewhere earn a say only by held-out validation, what to
try after a down vote, and hostile votes that must change nothing."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agents.learner import (
    MAX_NORM,
    MUS,
    NOTHING_LEARNT,
    Learnt,
    Limits,
    feedback_query,
    fit,
    mmr_penalty,
    near_duplicates,
    near_up_bonus,
    ranking_cosines,
    ratings,
    taken_elsewhere,
    train,
)
from agents.learner import _upper_share as _upper_share  # the bound itself

DIM = 32


def _units(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x)).astype(np.float32)
    return out


def _top1(scores: np.ndarray, right: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == right))


# --- ratings: what may be learnt from --------------------------------------------------

def test_hostile_pairs_are_dropped_and_counted() -> None:
    rng = np.random.default_rng(1)
    q, a = _units(rng, 6), _units(rng, 6)
    q[0, 3] = np.nan
    a[1, 0] = np.inf
    q[2] *= 10 * MAX_NORM  # absurdly long
    a[3] = 0.0
    signs = np.array([1, 1, 1, 1, 0, -1], np.float64)  # a zero sign says nothing
    r = ratings(q, a, signs, dim=DIM)
    assert len(r) == 1 and r.dropped == 5
    assert r.signs.tolist() == [-1.0]
    assert np.allclose(np.linalg.norm(r.questions, axis=1), 1.0)


def test_shapes_that_do_not_match_are_refused() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="questions"):
        ratings(_units(rng, 3, DIM + 1), _units(rng, 3), [1, 1, 1], dim=DIM)
    with pytest.raises(ValueError, match="aligned"):
        ratings(_units(rng, 3), _units(rng, 2), [1, 1, 1], dim=DIM)


def test_empty_ratings_teach_nothing() -> None:
    r = ratings(np.zeros((0, DIM)), np.zeros((0, DIM)), [], dim=DIM)
    assert len(r) == 0
    assert train(r) is NOTHING_LEARNT
    assert fit(r).lam == 0.0
    assert NOTHING_LEARNT.mapping_scores(np.ones(DIM), np.ones((3, DIM))).tolist() == [0.0] * 3


_WORST_CASE = """
import time, tracemalloc
import numpy as np
from agents.learner import Limits, fit, ratings, train
rng = np.random.default_rng(3)
n, dim, limits = 20_000, 384, Limits()
q, a, pool = (rng.standard_normal((k, dim)) for k in (n, n, 5000))
r = ratings(q, a, np.where(rng.random(n) < 0.5, 1.0, -1.0), dim=dim)
assert len(r) == limits.max_pairs, len(r)
assert np.allclose(r.questions[-1], q[-1] / np.linalg.norm(q[-1]), atol=1e-6)  # the latest
tracemalloc.start()
start = time.perf_counter()
train(r, pool)
learnt = fit(r)
print(time.perf_counter() - start, tracemalloc.get_traced_memory()[1])
assert learnt.u.shape == learnt.v.shape == (dim, limits.rank), learnt.u.shape
"""


def test_the_cost_is_bounded_whatever_the_number_of_votes() -> None:
    """At the encoder's dimension, with one BLAS thread as the daemon runs
    (cli.main): of 20,000 votes the latest max_pairs are kept, a training
    takes about a second and ~50 MB at its peak, and the stored mapping is
    2·d·rank floats."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _WORST_CASE], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    took, peak = float(out[0]), int(out[1])
    assert took < 15.0
    assert peak < 200 * 2**20


# --- the learnt mapping -----------------------------------------------------------------

def _rotated(rng: np.random.Generator, n: int, rotation: np.ndarray) -> tuple[np.ndarray, ...]:
    """Questions and their answers, answer = rotation · question (plus noise)."""
    q = _units(rng, n)
    a = q @ rotation.T + 0.05 * rng.standard_normal((n, DIM))
    return q, (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def test_a_mapping_that_generalises_earns_a_say_and_helps_unseen_questions() -> None:
    rng = np.random.default_rng(4)
    rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
    q, a = _rotated(rng, 120, rotation)
    learnt = train(ratings(q, a, np.ones(120), dim=DIM), a)
    assert learnt.lam > 0.0
    unseen_q, unseen_a = _rotated(rng, 60, rotation)
    before = unseen_q @ unseen_a.T
    after = np.stack([ranking_cosines(x, unseen_a, learnt=learnt) for x in unseen_q])
    right = np.arange(60)
    assert _top1(after, right) > _top1(before, right) + 0.3


def test_a_mapping_that_does_not_generalise_gets_no_say() -> None:
    """Answers unrelated to their questions: whatever fits the training pairs
    cannot help a held-out question, and validation says so. (Each memory
    answers one question here, so taken_elsewhere may earn a say: it is
    judged on its own, below.)"""
    rng = np.random.default_rng(5)
    q, a = _units(rng, 120), _units(rng, 120)
    learnt = train(ratings(q, a, np.ones(120), dim=DIM), a)
    assert learnt.lam == 0.0 and not learnt.u.size
    assert learnt.validation  # it was measured, not skipped
    x = _units(rng, 1)[0]
    assert np.allclose(ranking_cosines(x, a, learnt=learnt, beta=0.0), a @ x, atol=1e-5)


def test_too_few_rated_questions_teach_nothing() -> None:
    rng = np.random.default_rng(6)
    q, a = _units(rng, 5), _units(rng, 5)
    assert train(ratings(q, a, np.ones(5), dim=DIM), limits=Limits(min_questions=10)) is (
        NOTHING_LEARNT)


def test_training_is_deterministic() -> None:
    rng = np.random.default_rng(7)
    rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
    q, a = _rotated(rng, 80, rotation)
    r = ratings(q, a, np.ones(80), dim=DIM)
    one, two = train(r, a), train(r, a)
    assert one.validation == two.validation and one.lam == two.lam
    assert np.array_equal(one.u, two.u) and np.array_equal(one.v, two.v)


def test_a_down_vote_pushes_the_mapping_away_from_its_memory() -> None:
    rng = np.random.default_rng(8)
    q, a = _units(rng, 1), _units(rng, 1)
    up = fit(ratings(q, a, [1], dim=DIM), Limits(alpha=0.1))
    down = fit(ratings(q, a, [-1], dim=DIM), Limits(alpha=0.1))
    assert up.mapping_scores(q[0], a)[0] > 0.9
    assert down.mapping_scores(q[0], a)[0] < -0.9


# --- taken elsewhere --------------------------------------------------------------------

def test_taken_elsewhere_counts_only_unlike_questions_and_never_our_own_up() -> None:
    q = _unit(np.arange(1.0, DIM + 1.0))
    like = _unit(q + 0.05 * _unit(np.ones(DIM)))  # cosine >= 0.85: may answer q too
    unlike = _unit(np.roll(q, 7))
    assert float(like @ q) >= 0.85 > float(unlike @ q)
    ups = np.stack([unlike, unlike, like, unlike, unlike])
    rows = [0, 1, 1, 2, 9]  # memory 1 is also up for a like question; 9 is not a candidate
    own_up = np.array([False, False, True, False])
    taken = taken_elsewhere(q, 4, ups, rows, own_up)
    assert taken.tolist() == [True, False, False, False]  # 2: rated up for q itself
    assert taken_elsewhere(q, 4, ups, rows).tolist() == [True, False, True, False]
    hostile = ups.copy()
    hostile[0, 0] = np.nan
    assert taken_elsewhere(q, 4, hostile, rows).tolist() == [False, False, True, False]
    assert taken_elsewhere(q, 3, np.zeros((0, DIM)), []).tolist() == [False] * 3


def _decoys(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each question is nearer the next question's answer than its own: the
    cosine picks a memory that is another question's answer."""
    a = _units(rng, n)
    q = a + 1.15 * np.roll(a, -1, axis=0) + 0.05 * rng.standard_normal((n, DIM))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), a


def test_taken_elsewhere_earns_a_say_where_each_memory_answers_one_question() -> None:
    rng = np.random.default_rng(9)
    q, a = _decoys(rng, 80)
    right = np.arange(80)
    assert _top1(q @ a.T, right) < 0.2
    learnt = train(ratings(q, a, np.ones(80), dim=DIM), a)
    assert learnt.mu > 0.0
    # unseen questions whose decoys are rated up for other questions:
    fresh_q = q[40:]
    scores = []
    for i, x in enumerate(fresh_q):
        taken = taken_elsewhere(x, 80, np.delete(q, 40 + i, axis=0),
                                np.delete(np.arange(80), 40 + i))
        scores.append(ranking_cosines(x, a, learnt=Learnt(learnt.u, learnt.v, 0.0, learnt.mu),
                                      taken=taken))
    assert _top1(np.stack(scores), right[40:]) > 0.8


def test_taken_elsewhere_gets_no_say_where_memories_answer_many_questions() -> None:
    """Every question rated up one of three memories: a held-out question's own
    answer is always taken by others, so the penalty would only hurt."""
    rng = np.random.default_rng(10)
    hubs = _units(rng, 3)
    which = rng.integers(3, size=90)
    q = hubs[which] + 0.6 * rng.standard_normal((90, DIM))
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    learnt = train(ratings(q, hubs[which], np.ones(90), dim=DIM), _units(rng, 50))
    assert learnt.mu == 0.0


def _few_decoys(rng: np.random.Generator, n: int, decoyed: int) -> tuple[np.ndarray, np.ndarray]:
    """n questions near their own answers, but the first `decoyed` nearer the
    next question's answer (the FAQ's shape: the cosine is mostly right)."""
    a = _units(rng, n)
    q = a + 0.05 * rng.standard_normal((n, DIM))
    q[:decoyed] = a[:decoyed] + 1.15 * a[1:decoyed + 1]
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), a


def test_taken_elsewhere_that_wins_a_few_and_can_hurt_none_earns_the_largest_weight() -> None:
    """Where no held-out question's own answer is taken elsewhere, the penalty
    can hurt none: a few wins are enough (a sign test over 3 wins and no
    loss, p = 0.125, would refuse it), and of the weights that win as much
    the largest is taken."""
    rng = np.random.default_rng(12)
    q, a = _few_decoys(rng, 60, 3)
    assert _top1(q @ a.T, np.arange(60)) == pytest.approx(57 / 60)
    learnt = train(ratings(q, a, np.ones(60), dim=DIM), a)
    assert learnt.mu == max(MUS)
    strict = train(ratings(q, a, np.ones(60), dim=DIM), a, limits=Limits(max_exposed=0.0))
    assert strict.mu == 0.0  # the sign test alone: too few wins


def test_taken_elsewhere_with_nothing_to_win_gets_no_say() -> None:
    rng = np.random.default_rng(13)
    q, a = _few_decoys(rng, 60, 0)
    assert train(ratings(q, a, np.ones(60), dim=DIM), a).mu == 0.0


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 20), (0, 47), (3, 47), (10, 50)])
def test_the_exposed_share_bound_is_clopper_pearson(k: int, n: int) -> None:
    bound = _upper_share(k, n)
    tail = sum(math.comb(n, i) * bound ** i * (1 - bound) ** (n - i) for i in range(k + 1))
    assert tail == pytest.approx(0.1, abs=1e-6)  # P(X <= k | bound) = 1 - 0.9
    assert k / n < bound < 1.0
    if k == 0:
        assert bound == pytest.approx(1 - 0.1 ** (1 / n), abs=1e-6)
    assert _upper_share(5, 5) == 1.0 and _upper_share(0, 0) == 1.0


# --- what to try after a down vote -------------------------------------------------------

def test_feedback_moves_the_question_away_from_what_was_rejected() -> None:
    rng = np.random.default_rng(11)
    q, gone = _units(rng, 1)[0], _units(rng, 1)[0]
    moved = feedback_query(q, gone[None, :], beta=0.3)
    assert abs(float(np.linalg.norm(moved)) - 1.0) < 1e-5
    assert float(moved @ gone) < float(q @ gone)
    assert np.allclose(feedback_query(q, np.zeros((0, DIM))), q, atol=1e-6)
    assert np.allclose(feedback_query(q * 3.0), q, atol=1e-6)  # a unit vector whatever


def test_feedback_ignores_hostile_rejected_rows_and_refuses_a_hostile_question() -> None:
    rng = np.random.default_rng(12)
    q = _units(rng, 1)[0]
    junk = np.stack([np.full(DIM, np.nan), np.full(DIM, np.inf), np.full(DIM, 1e300),
                     np.zeros(DIM)])
    assert np.allclose(feedback_query(q, junk), q, atol=1e-6)
    for bad in (np.full(DIM, np.nan), np.zeros(DIM), np.full(DIM, 1e300)):
        with pytest.raises(ValueError, match="question"):
            feedback_query(bad)
    assert np.isfinite(feedback_query(q, q[None, :], beta=1.0)).all()  # q - q = 0: q stays


def test_ranking_cosines_with_nothing_learnt_or_rejected_are_the_cosines() -> None:
    rng = np.random.default_rng(13)
    q, cands = _units(rng, 1)[0], _units(rng, 10)
    assert np.allclose(ranking_cosines(q, cands), cands @ q, atol=1e-5)
    assert ranking_cosines(q, np.zeros((0, DIM))).shape == (0,)
    # mu with no taken mask, or a taken mask with mu 0: nothing moves
    assert np.allclose(ranking_cosines(q, cands, learnt=Learnt(
        NOTHING_LEARNT.u, NOTHING_LEARNT.v, 0.0, 0.5)), cands @ q, atol=1e-5)


def test_after_a_down_vote_the_rejected_memory_s_twin_loses_ground() -> None:
    rng = np.random.default_rng(14)
    q = _units(rng, 1)[0]
    side = _unit(rng.standard_normal(DIM) - q * float(rng.standard_normal(DIM) @ q))
    rejected = _unit(q + 0.4 * side)
    twin = _unit(q + 0.42 * side)
    other = _unit(q - 0.45 * side)
    cands = np.stack([twin, other])
    assert float(twin @ q) > float(other @ q)  # the cosine would try the twin next
    scores = ranking_cosines(q, cands, rejected=rejected[None, :])
    assert scores[1] > scores[0]


def test_the_policies_that_lost_behave_as_documented() -> None:
    rng = np.random.default_rng(15)
    cands = _units(rng, 4)
    gone = cands[:1]
    assert near_duplicates(cands, gone, 0.999).tolist() == [True, False, False, False]
    assert near_duplicates(cands, np.zeros((0, DIM)), 0.5).tolist() == [False] * 4
    penalty = mmr_penalty(cands, gone, 0.5)
    assert penalty[0] == pytest.approx(-0.5, abs=1e-5) and (penalty[1:] > -0.5).all()
    bonus = near_up_bonus(cands[1], cands, cands[1:2], cands[2:3])
    assert bonus.tolist() == pytest.approx([0.0, 0.0, 0.1, 0.0], abs=1e-5)


# --- properties: hostile votes change nothing they should not ----------------------------

_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, (12, 8), elements=_floats),
       hnp.arrays(np.float32, (12, 8), elements=_floats),
       hnp.arrays(np.float32, (12,), elements=_floats))
def test_whatever_the_votes_say_what_is_learnt_is_finite(q: np.ndarray, a: np.ndarray,
                                                        signs: np.ndarray) -> None:
    r = ratings(q, a, signs, dim=8)
    assert len(r) + r.dropped == 12
    for arr in (r.questions, r.answers, r.signs):
        assert np.isfinite(arr).all()
    learnt = train(r, a, limits=Limits(min_questions=1, min_gain=0))
    mapped = fit(r).mapping_scores(np.ones(8), np.eye(8))
    assert np.isfinite(mapped).all() and np.isfinite(learnt.u).all()
    scores = ranking_cosines(np.ones(8), np.eye(8), learnt=learnt, rejected=a,
                             taken=np.ones(8, bool))
    assert np.isfinite(scores).all()
