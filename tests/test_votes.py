"""The vote CRDT: merge laws (Hypothesis) and fitness derived from entries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdt.votes import Counter, fitness, merge_votes, record_vote, tally

keys = st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.sampled_from([b"r1", b"r2"]))
counters = st.builds(Counter, st.integers(0, 5), st.integers(0, 5), st.integers(0, 5))
vote_maps = st.dictionaries(keys, counters, max_size=6)


@given(vote_maps, vote_maps)
def test_merge_commutes(a: dict, b: dict) -> None:  # type: ignore[type-arg]
    assert merge_votes(a, b) == merge_votes(b, a)


@given(vote_maps, vote_maps, vote_maps)
def test_merge_associates(a: dict, b: dict, c: dict) -> None:  # type: ignore[type-arg]
    assert merge_votes(merge_votes(a, b), c) == merge_votes(a, merge_votes(b, c))


@given(vote_maps)
def test_merge_is_idempotent(a: dict) -> None:  # type: ignore[type-arg]
    assert merge_votes(a, a) == a


@given(st.lists(st.booleans(), max_size=20))
def test_recorded_votes_tally_and_newest_wins(ups: list[bool]) -> None:
    history = [None]
    for up in ups:
        history.append(record_vote(history[-1], up))
    last = history[-1]
    if last is None:
        return
    assert (last.up, last.down) == (sum(ups), len(ups) - sum(ups))
    # any older state merged with the newest gives the newest
    for old in history[1:]:
        assert merge_votes({(b"v", b"r"): old}, {(b"v", b"r"): last})[(b"v", b"r")] == last


def test_fitness_moves_with_votes() -> None:
    assert fitness(0, 0) == 0
    assert fitness(1, 0) > 0 > fitness(0, 1)
    assert fitness(5, 0) > fitness(1, 0)
    # each entry is one vote at most, by its net sign (a counter is a claim)
    assert tally([Counter(1, 2, 1), Counter(3, 0, 4)]) == (1, 1)
