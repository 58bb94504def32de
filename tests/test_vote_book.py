"""The spore's one vote book (p2pnode.regions.RegionIndex) says what the vote
CRDT says (crdt.votes): each memory's voices, kept as votes come, equal
`voices` over the merged entries, whatever the order, updates and stances;
`said` is those voices over the votes cast on the same question. With trust
set, each voice weighs its voter's, the spore's own 1.0, the low ones a
quarter of a voice together."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.consensus import REJECTED_BELOW
from agents.trust import ESTABLISHED, FLOOR
from crdt.votes import Counter, VoteKey, fitness, merge_votes, voices
from dht import compact
from p2pnode.regions import LOW_VOICES_CAP, RegionIndex
from tests.harness import FakeEncoder

DIM = 8
RNG = np.random.default_rng(2)
QUESTIONS = []
for _ in range(3):
    _x = RNG.standard_normal((1, DIM)).astype(np.float32)
    _codes, _scales = compact.to_int8(_x / np.linalg.norm(_x))
    QUESTIONS.append(compact.pack(_codes[0], float(_scales[0])))
MEMORIES = [b"m%d" % i for i in range(3)]
VOTERS = [b"v%d" % i for i in range(4)]

votes = st.lists(st.tuples(st.sampled_from(MEMORIES), st.sampled_from(VOTERS),
                           st.integers(0, 2), st.integers(1, 4), st.integers(0, 4),
                           st.integers(0, 4)), max_size=60)


def _question(i: int) -> np.ndarray:
    codes, scale = compact.unpack(QUESTIONS[i], DIM)
    return codes.astype(np.float32) * scale


@settings(max_examples=200, deadline=None)
@given(votes)
def test_the_book_counts_voices_as_the_crdt_does(cast: list[tuple[bytes, bytes, int, int, int,
                                                                  int]]) -> None:
    book = RegionIndex(DIM)
    merged: dict[bytes, dict[VoteKey, Counter]] = {m: {} for m in MEMORIES}
    question_of: dict[bytes, int] = {}
    for memory, voter, q, seq, up, down in cast:
        up, down = min(up, seq), min(down, seq - min(up, seq))
        region = b"r%d" % q  # a region is its question: one question per region
        counter = Counter(seq, up, down)
        book.put_compact(memory, (voter, region), QUESTIONS[q], counter)
        merged[memory] = merge_votes(merged[memory], {(voter, region): counter})
        question_of[region] = q
    for memory in MEMORIES:
        entries, up, down = book.voices(memory)
        assert (up, down) == voices(merged[memory])
        assert entries == len(merged[memory])
        assert book.overall(memory) == fitness(*voices(merged[memory]))
        for (voter, region), counter in merged[memory].items():
            assert book.counter(memory, (voter, region)) == counter
    for q in range(len(QUESTIONS)):
        said = book.said(_question(q), recall_max=0)
        expected = {m: fitness(*voices({k: c for k, c in merged[m].items()
                                        if question_of[k[1]] == q}))
                    for m in MEMORIES
                    if any(question_of[k[1]] == q for k in merged[m])}
        assert said.fitness == expected


def test_an_older_or_equal_entry_changes_nothing() -> None:
    book = RegionIndex(DIM)
    key = (b"v", b"r")
    assert book.put_compact(b"m", key, QUESTIONS[0], Counter(2, 0, 2))
    assert not book.put_compact(b"m", key, QUESTIONS[0], Counter(2, 0, 2))
    assert not book.put_compact(b"m", key, QUESTIONS[0], Counter(1, 1, 0))
    assert book.voices(b"m") == (1, 0, 1) and len(book) == 1
    assert book.put_compact(b"m", key, QUESTIONS[0], Counter(5, 3, 2))
    assert book.voices(b"m") == (1, 1, 0)


def test_a_question_of_another_dimension_is_refused() -> None:
    book = RegionIndex(DIM)
    other = compact.pack(np.ones(DIM + 1, np.int8), 0.1)
    with pytest.raises(ValueError, match="compact embedding"):
        book.put_compact(b"m", (b"v", b"r"), other, Counter(1, 1, 0))
    assert len(book) == 0 and book.voices(b"m") == (0, 0, 0)


def test_a_flood_of_voters_on_one_question_costs_a_few_hundred_bytes_each() -> None:
    voters = [RNG.bytes(32) for _ in range(4000)]
    tracemalloc.start()
    try:
        book = RegionIndex(384)
        x = RNG.standard_normal((1, 384)).astype(np.float32)
        codes, scales = compact.to_int8(x / np.linalg.norm(x))
        qvec = compact.pack(codes[0], float(scales[0]))
        before = tracemalloc.get_traced_memory()[0]
        for i, voter in enumerate(voters):
            book.put_compact(b"m%d" % (i % 50), (voter, b"r" * 32), qvec, Counter(1, 0, 1))
        per_vote = (tracemalloc.get_traced_memory()[0] - before) / len(voters)
    finally:
        tracemalloc.stop()
    assert per_vote < 400, per_vote  # was ~3.4 KB in three copies (issue 10)
    said = book.said(codes[0].astype(np.float32) * scales[0], recall_max=4)
    assert len(said.fitness) == 50 and all(f < 0 for f in said.fitness.values())


# --- weighed voices (agents.trust) -------------------------------------------------------

def _weighed(entries: dict[tuple[bytes, bytes, bytes], int], memory: bytes,
             weight: dict[bytes, float], cap: float) -> tuple[float, float]:
    """What the book must say of one memory: each voter's entries one voice,
    weighing its trust; the voices below ESTABLISHED count only where none
    above it spoke, and then capped together."""
    said: dict[bytes, int] = {}
    for (m, voter, _), s in entries.items():
        if m == memory:
            said[voter] = said.get(voter, 0) + s
    high, low = [0.0, 0.0], [0.0, 0.0]
    for voter, total in said.items():
        if total:
            w = weight[voter]
            if w < ESTABLISHED:  # a low voice: what it earned above FLOOR
                low[total < 0] += max(w - FLOOR, 0.0)
            else:
                high[total < 0] += w
    if sum(high):
        low = [0.0, 0.0]
    scale = min(1.0, cap / sum(low)) if sum(low) else 1.0
    return high[0] + low[0] * scale, high[1] + low[1] * scale


trusts = st.fixed_dictionaries({v: st.sampled_from([0.0, 0.02, 0.3, 0.4, 0.75, 1.0])
                                for v in VOTERS})


@settings(max_examples=200, deadline=None)
@given(votes, trusts, st.booleans())
def test_voices_weigh_their_voters_trust_whenever_it_is_set(
        cast: list[tuple[bytes, bytes, int, int, int, int]], weight: dict[bytes, float],
        first: bool) -> None:
    book = RegionIndex(DIM)
    if first:  # set before the votes come, or after: the same book
        book.set_trust(weight, default=0.0, own=None)
    entries: dict[tuple[bytes, bytes, bytes], int] = {}
    for memory, voter, q, seq, up, down in cast:
        up, down = min(up, seq), min(down, seq - min(up, seq))
        if book.put_compact(memory, (voter, b"r%d" % q), QUESTIONS[q], Counter(seq, up, down)):
            entries[memory, voter, b"r%d" % q] = (up > down) - (up < down)
    if not first:
        book.set_trust(weight, default=0.0, own=None)
    for memory in MEMORIES:
        expected = _weighed(entries, memory, weight, LOW_VOICES_CAP)
        assert book.weighed(memory) == pytest.approx(expected, abs=1e-9)
        assert book.voices(memory)[1:] == voices({(v, r): Counter(1, s > 0, s < 0) for (m, v, r),
                                                  s in entries.items() if m == memory})
    for q in range(len(QUESTIONS)):
        said = book.said(_question(q), recall_max=0)
        on_q = {k: s for k, s in entries.items() if k[2] == b"r%d" % q}
        assert said.fitness == pytest.approx(
            {m: fitness(*_weighed(on_q, m, weight, LOW_VOICES_CAP)) for m in {k[0] for k in on_q}},
            abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(votes)
def test_every_voice_at_one_is_the_book_without_trust(
        cast: list[tuple[bytes, bytes, int, int, int, int]]) -> None:
    plain, weighed = RegionIndex(DIM), RegionIndex(DIM)
    weighed.set_trust({}, default=1.0, own=None)
    for memory, voter, q, seq, up, down in cast:
        for book in (plain, weighed):
            book.put_compact(memory, (voter, b"r%d" % q), QUESTIONS[q], Counter(seq, up, down))
    for memory in MEMORIES:
        assert plain.overall(memory) == weighed.overall(memory)
    for q in range(len(QUESTIONS)):
        assert plain.said(_question(q), 4) == weighed.said(_question(q), 4)


def test_the_spores_own_vote_weighs_one_whatever_its_trust() -> None:
    book = RegionIndex(DIM)
    book.set_trust({b"me": 0.0, b"member": 1.0}, default=0.0, own=b"me")
    book.put_compact(b"m", (b"me", b"r"), QUESTIONS[0], Counter(1, 0, 1))
    book.put_compact(b"m", (b"stranger", b"r"), QUESTIONS[0], Counter(1, 1, 0))
    assert book.said(_question(0), 0).fitness == {b"m": fitness(0, 1)}  # rejected at once
    assert book.voices(b"m") == (2, 1, 1) and book.weighed(b"m") == (0.0, 1.0)
    book.put_compact(b"m", (b"member", b"r"), QUESTIONS[0], Counter(1, 1, 0))
    assert book.overall(b"m") == fitness(1, 1)


def test_voices_below_established_weigh_a_quarter_of_one_together() -> None:
    book = RegionIndex(DIM)
    fresh = [b"fresh%d" % i for i in range(1000)]
    book.set_trust({b"member": 0.5} | {k: 0.3 for k in fresh}, default=0.02, own=None)
    for key in fresh:
        book.put_compact(b"m", (key, b"r"), QUESTIONS[0], Counter(1, 0, 1))
    assert book.weighed(b"m") == (0.0, LOW_VOICES_CAP)
    assert book.said(_question(0), 0).fitness[b"m"] > REJECTED_BELOW  # never rejected by them
    book.put_compact(b"m", (b"member", b"r"), QUESTIONS[0], Counter(1, 1, 0))
    assert book.overall(b"m") == fitness(0.5, 0)  # a member spoke: they fall silent
    book.put_compact(b"m", (b"latecomer", b"r"), QUESTIONS[0], Counter(1, 1, 0))  # default
    assert book.weighed(b"m") == (0.5, 0.0)
    book.put_compact(b"n", (b"latecomer", b"r"), QUESTIONS[0], Counter(1, 1, 0))
    book.put_compact(b"n", (fresh[0], b"r"), QUESTIONS[0], Counter(1, 0, 1))
    # the latecomer (FLOOR: no history) weighs nothing; the other its earned 0.28, capped
    assert book.weighed(b"n") == pytest.approx((0.0, 0.25))


# --- what the learner reads (agents.learner via p2pnode.ranking.learnt_cosines) --------

def _region(i: int) -> bytes:
    return b"r%d" % i


def test_rated_pairs_are_net_per_memory_and_question_latest_last() -> None:
    book = RegionIndex(DIM)
    book.put_compact(MEMORIES[0], (VOTERS[0], _region(0)), QUESTIONS[0], Counter(1, 1, 0))
    book.put_compact(MEMORIES[0], (VOTERS[1], _region(0)), QUESTIONS[0], Counter(1, 1, 0))
    book.put_compact(MEMORIES[1], (VOTERS[0], _region(1)), QUESTIONS[1], Counter(1, 0, 1))
    book.put_compact(MEMORIES[2], (VOTERS[0], _region(2)), QUESTIONS[2], Counter(1, 1, 0))
    book.put_compact(MEMORIES[2], (VOTERS[1], _region(2)), QUESTIONS[2], Counter(1, 0, 1))
    questions, ids, signs = book.rated_pairs(10)
    assert ids == [MEMORIES[0], MEMORIES[1]]  # memory 2: one up, one down, net nothing
    assert signs.tolist() == [1.0, -1.0]
    assert questions == pytest.approx(np.stack([_question(0), _question(1)]))
    book.put_compact(MEMORIES[0], (VOTERS[2], _region(0)), QUESTIONS[0], Counter(1, 1, 0))
    assert book.rated_pairs(1)[1] == [MEMORIES[0]]  # voted on last: the latest kept
    assert book.rated_pairs(0)[1] == []


def test_low_voices_teach_the_learner_nothing() -> None:
    book = RegionIndex(DIM)
    for k in range(50):
        book.put_compact(MEMORIES[0], (b"sybil%d" % k, _region(0)), QUESTIONS[0],
                         Counter(1, 1, 0))
    book.set_trust({}, default=ESTABLISHED / 10, own=VOTERS[0])
    assert book.rated_pairs(10)[1] == []
    assert len(book.ups_on(MEMORIES)[1]) == 0
    book.put_compact(MEMORIES[0], (VOTERS[0], _region(0)), QUESTIONS[0], Counter(1, 1, 0))
    assert book.rated_pairs(10)[1] == [MEMORIES[0]]


def test_ups_on_names_the_candidate_each_up_rated_question_rated() -> None:
    book = RegionIndex(DIM)
    book.put_compact(MEMORIES[1], (VOTERS[0], _region(0)), QUESTIONS[0], Counter(1, 1, 0))
    book.put_compact(MEMORIES[2], (VOTERS[0], _region(1)), QUESTIONS[1], Counter(1, 0, 1))
    book.put_compact(MEMORIES[0], (VOTERS[0], _region(2)), QUESTIONS[2], Counter(1, 1, 0))
    cands = [MEMORIES[2], b"not voted", MEMORIES[1]]
    qs, rows = book.ups_on(cands)
    assert rows.tolist() == [2]  # memory 1, up; memory 2 was rated down; memory 0 no candidate
    assert qs == pytest.approx(_question(0)[None, :])
    for k in range(20):
        book.put_compact(MEMORIES[1], (VOTERS[1], b"q%d" % k), QUESTIONS[k % 3],
                         Counter(1, 1, 0))
    # memory 1 now rated up for all 3 questions: the limit keeps the latest 2
    assert book.ups_on(cands, limit=2)[0] == pytest.approx(
        np.stack([_question((19 - 1) % 3), _question(19 % 3)]))
    assert book.ups_on([])[0].shape == (0, DIM)


def test_a_question_whose_int8_row_falls_short_of_unit_length_is_still_the_same() -> None:
    """int8 rounding leaves a stored question up to ~1e-3 short of unit
    length, as much as SAME_QUESTION leaves below 1: the book compares
    cosines, so a vote on a question finds that question again (it missed
    it by a dot product of 0.9990 against 0.999, with a question of two
    words of the fake encoder)."""
    encoder = FakeEncoder()
    dim, q = encoder.dim, encoder.embed(["mercury alpha"])[0]
    codes, scales = compact.to_int8(q[None, :])
    stored = codes[0].astype(np.float32) * scales[0]
    assert float(stored @ q) < 0.999 < float(stored @ q) / float(np.linalg.norm(stored))
    book = RegionIndex(dim)
    book.put_compact(b"m", (b"v", b"r"), compact.pack(codes[0], float(scales[0])),
                     Counter(1, 0, 1))
    assert book.said(q, 5).fitness[b"m"] <= REJECTED_BELOW


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-6, 1.0, 1e30, 3.4e38])
def test_a_peers_question_scale_is_no_weight_and_zero_is_no_question(scale: float) -> None:
    """Questions are compared by the cosine of their codes: a peer's scale,
    tiny or huge, neither hides its vote's question nor gives it more say,
    and a question of scale 0 is alike to nothing, even in the same
    direction."""
    codes, _ = compact.to_int8(_question(0)[None, :])
    book = RegionIndex(DIM)
    book.put_compact(b"m", (b"v", b"r"), compact.pack(codes[0], scale), Counter(1, 0, 1))
    book.put_compact(b"n", (b"v", b"r2"), QUESTIONS[1], Counter(1, 1, 0))
    said = book.said(_question(0) / np.linalg.norm(_question(0)), 5)
    assert b"n" not in said.fitness  # another question
    if scale == 0.0:
        assert said.fitness == {}
    else:
        assert said.fitness[b"m"] <= REJECTED_BELOW
