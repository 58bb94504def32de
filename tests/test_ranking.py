"""The ask's ranking (p2pnode.ranking, pure): one scoring for every
candidate, held here or fetched from the swarm, rejected answers last, the
agents' say only as far as it was earned."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from agents import consensus
from crdt.votes import fitness
from p2pnode.ranking import Candidate, Opinions, rank, runner_up, shortlist, with_score

DIM = 8


def cand(i: int, cosine: float, remote: bool = False) -> Candidate:
    mid = bytes([i]) * 32
    return Candidate(mid, cosine, np.full(DIM, cosine, np.float32),
                     {"id": mid.hex(), "text": f"m{i}", **({"remote": True} if remote else {})},
                     row=None if remote else i)


cosines = st.lists(st.floats(-1.0, 1.0, width=32), min_size=1, max_size=12)
said = st.lists(st.sampled_from([None, 1.0, -1.0, 2.0, -2.0]), min_size=12, max_size=12)


def opinions(cands: list[Candidate], votes: list[float | None]) -> Opinions:
    """Region fitness from net up votes on this question (None: nobody said)."""
    return Opinions({c.memory_id: fitness(max(v, 0), max(-v, 0))
                     for c, v in zip(cands, votes, strict=False) if v is not None})


@given(cosines, said)
def test_rejected_go_last_and_the_rest_by_score(cos: list[float], votes: list[float | None]
                                                ) -> None:
    cands = [cand(i, c, remote=i % 2 == 1) for i, c in enumerate(cos)]
    view = opinions(cands, votes)
    ranked = rank(cands, view)
    assert sorted(s.index for s in ranked) == list(range(len(cands)))
    keys = [(s.rejected, -s.score) for s in ranked]
    assert keys == sorted(keys)
    for s in ranked:
        assert s.rejected == bool(consensus.rejected(view.region.get(s.candidate.memory_id, 0.0)))


@given(cosines, said)
def test_a_candidates_score_is_the_same_alone_or_among_others_local_or_remote(
        cos: list[float], votes: list[float | None]) -> None:
    cands = [cand(i, c) for i, c in enumerate(cos)]
    view = opinions(cands, votes)
    together = {s.candidate.memory_id: s.score for s in rank(cands, view)}
    for c in cands:
        [alone] = rank([cand(c.row or 0, c.cosine, remote=True)], view)
        assert alone.score == together[c.memory_id]
        assert alone.score == np.float32(np.float32(c.cosine) + np.float32(
            consensus.REGION_WEIGHT) * np.float32(view.region.get(c.memory_id, 0.0)))


def test_a_down_vote_on_this_question_puts_the_best_cosine_last() -> None:
    best, other, third = cand(1, 0.9), cand(2, 0.5), cand(3, 0.1)
    view = Opinions({best.memory_id: fitness(0, 1)})
    ranked = rank([best, other, third], view)
    assert [s.candidate for s in ranked] == [other, third, best]
    assert with_score(ranked[-1]).candidate.source["rejected"] is True
    assert "rejected" not in with_score(ranked[0]).candidate.source
    assert shortlist([best, other, third], view, 2) == [other, third]


def test_the_shortlist_is_the_rankings_head_ties_and_rejections_included() -> None:
    """`shortlist` reads combine's order directly; it must be `rank`'s
    without the agents: rejected last, by score, ties in the candidates' order."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(0, 12))
        cands = [cand(i, float(rng.choice([0.1, 0.5, 0.5, 0.9]))) for i in range(n)]
        votes = {c.memory_id: float(rng.choice([-1.0, -0.2, -0.1, 0.0, 0.3]))
                 for c in cands if rng.random() < 0.5}
        view = Opinions(votes, {c.memory_id: float(rng.random()) for c in cands})
        keep = int(rng.integers(1, 14))
        assert shortlist(cands, view, keep) == [s.candidate for s in rank(cands, view)][:keep]


def test_the_agents_replace_their_earned_share_of_the_cosine() -> None:
    a, b = cand(1, 0.8), cand(2, 0.7)
    say = np.array([0.2, 0.9], np.float32)
    assert [s.candidate for s in rank([a, b], Opinions({}), say, 0.0)] == [a, b]
    ranked = rank([a, b], Opinions({}), say, 0.5)
    assert [s.candidate for s in ranked] == [b, a]
    assert ranked[0].score == np.float32(0.7) + 0.5 * (float(say[1]) - b.cosine)
    assert with_score(ranked[0]).candidate.source["agents"] == round(float(say[1]), 4)
    # Candidates past the agents' consensus (they score at most so many) get no say.
    says = {s.index: s.agents for s in rank([a, b], Opinions({}), say[:1], 0.5)}
    assert says == {0: float(say[0]), 1: None}


def test_runner_up_reads_the_two_best() -> None:
    assert runner_up([]) == (0.0, 0.0)
    ranked = rank([cand(1, 0.3), cand(2, 0.6)], Opinions({}))
    assert runner_up(ranked) == (ranked[0].score, ranked[1].score)
    assert runner_up(ranked[:1]) == (ranked[0].score, 0.0)
