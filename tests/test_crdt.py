"""The pure CRDT layer: merge laws, add-wins, codecs and the sync plan (Hypothesis)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import lww, orset, sync
from crdt.lww import LWW
from crdt.orset import ORSet
from crdt.sync import DecodeError
from crdt.votes import Counter, VoteKey, merge_votes

# --- strategies ---------------------------------------------------------------------

REPLICAS = (b"r0", b"r1", b"r2")
ELEMENTS = st.sampled_from([b"a", b"b", b"c", b""])
ORSET_OPS = st.lists(st.tuples(st.sampled_from(["add", "add", "remove", "merge", "delta"]),
                               st.integers(0, 2), ELEMENTS, st.integers(0, 2)), max_size=30)


def delta_of(s: ORSet, element: bytes) -> ORSet:
    """The join-irreducible part of `s` that carries `element`'s live dots (a delta state)."""
    dots = s.entries.get(element, frozenset())
    return orset.merge(orset.empty(), ORSet({element: dots} if dots else {}, {}, dots))


@st.composite
def orset_replicas(draw: st.DrawFn) -> list[ORSet]:
    """Three replicas' states from one shared history, so a dot means one add everywhere."""
    states = [orset.empty() for _ in REPLICAS]
    for kind, i, element, j in draw(ORSET_OPS):
        if kind == "add":
            states[i] = orset.add(states[i], element, REPLICAS[i])
        elif kind == "remove":
            states[i] = orset.remove(states[i], element)
        elif kind == "merge":
            states[i] = orset.merge(states[i], states[j])
        else:
            states[i] = orset.merge(states[i], delta_of(states[j], element))
    return states


registers = st.builds(LWW, st.integers(0, 4), st.sampled_from([b"w1", b"w2"]),
                      st.sampled_from([b"", b"x", b"y"]))
big_registers = st.builds(LWW, st.integers(0, lww.MAX_STAMP), st.binary(max_size=16),
                          st.binary(max_size=64))
lww_maps = st.dictionaries(st.sampled_from([b"k1", b"k2", b"k3"]), registers, max_size=3)
vote_maps = st.dictionaries(
    st.tuples(st.sampled_from([b"a", b"b"]), st.sampled_from([b"r1", b"r2"])),
    st.builds(Counter, st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), max_size=4)

# --- merge laws ---------------------------------------------------------------------


@given(orset_replicas())
def test_orset_merge_laws(states: list[ORSet]) -> None:
    a, b, c = states
    assert orset.merge(a, b) == orset.merge(b, a)
    assert orset.merge(orset.merge(a, b), c) == orset.merge(a, orset.merge(b, c))
    assert orset.merge(a, a) == a
    assert orset.merge(a, orset.empty()) == a


@given(orset_replicas(), ELEMENTS, ELEMENTS)
def test_orset_merge_laws_with_gapped_contexts(states: list[ORSet], e: bytes, f: bytes) -> None:
    """Delta states see dot n of a replica without 1..n-1: their contexts have a cloud."""
    a, b, c = delta_of(states[0], e), delta_of(states[1], f), states[2]
    assert orset.merge(a, b) == orset.merge(b, a)
    assert orset.merge(orset.merge(a, b), c) == orset.merge(a, orset.merge(b, c))
    assert orset.merge(orset.merge(a, c), a) == orset.merge(a, c)
    assert orset.decode(orset.encode(orset.merge(a, b))) == orset.merge(a, b)


@given(registers, registers, registers)
def test_lww_merge_laws(a: LWW, b: LWW, c: LWW) -> None:
    assert lww.merge(a, b) == lww.merge(b, a)
    assert lww.merge(lww.merge(a, b), c) == lww.merge(a, lww.merge(b, c))
    assert lww.merge(a, a) == a


@given(lww_maps, lww_maps, lww_maps)
def test_lww_map_merge_laws(a: dict[bytes, LWW], b: dict[bytes, LWW],
                            c: dict[bytes, LWW]) -> None:
    assert lww.merge_maps(a, b) == lww.merge_maps(b, a)
    assert lww.merge_maps(lww.merge_maps(a, b), c) == lww.merge_maps(a, lww.merge_maps(b, c))
    assert lww.merge_maps(a, a) == a


@given(vote_maps, vote_maps, vote_maps)
def test_vote_merge_laws(a: dict[VoteKey, Counter], b: dict[VoteKey, Counter],
                         c: dict[VoteKey, Counter]) -> None:
    assert merge_votes(a, b) == merge_votes(b, a)
    assert merge_votes(merge_votes(a, b), c) == merge_votes(a, merge_votes(b, c))
    assert merge_votes(a, a) == a


def test_lww_put_keeps_the_newest_write() -> None:
    m = lww.put({}, b"peer", 5, b"w1", b"new")
    assert lww.put(m, b"peer", 4, b"w2", b"old") == m
    assert lww.put(m, b"peer", 5, b"w2", b"tie")[b"peer"] == LWW(5, b"w2", b"tie")


# --- add-wins -----------------------------------------------------------------------


@given(orset_replicas(), ELEMENTS)
def test_concurrent_add_beats_remove(states: list[ORSet], element: bytes) -> None:
    x, y, _ = states
    added = orset.add(x, element, REPLICAS[0])
    removed = orset.remove(y, element)  # y never saw `added`'s new dot
    assert orset.contains(orset.merge(added, removed), element)
    assert orset.contains(orset.merge(removed, added), element)


@given(orset_replicas(), ELEMENTS)
def test_observed_remove_removes(states: list[ORSet], element: bytes) -> None:
    x, y, _ = states
    removed = orset.remove(orset.merge(y, x), element)  # saw every dot x holds
    assert not orset.contains(orset.merge(x, removed), element)


def test_add_remove_readd_by_hand() -> None:
    a = orset.add(orset.empty(), b"m", b"A")
    b = orset.remove(orset.merge(orset.empty(), a), b"m")
    assert orset.elements(orset.merge(a, b)) == frozenset()
    a2 = orset.add(a, b"m", b"A")  # concurrent with b's remove
    assert orset.elements(orset.merge(b, a2)) == {b"m"}
    assert orset.merge(b, a2).vv == {b"A": 2}


# --- codecs -------------------------------------------------------------------------


@given(orset_replicas())
def test_orset_codec_round_trips(states: list[ORSet]) -> None:
    for s in states:
        data = orset.encode(s)
        assert orset.decode(data) == s
        assert orset.encode(orset.decode(data)) == data


@given(big_registers, st.dictionaries(st.binary(max_size=32), big_registers, max_size=5))
def test_lww_codec_round_trips(reg: LWW, m: dict[bytes, LWW]) -> None:
    assert lww.decode(lww.encode(reg)) == reg
    assert lww.decode_map(lww.encode_map(m)) == m
    assert lww.encode_map(dict(reversed(m.items()))) == lww.encode_map(m)


def test_orset_decode_canonicalizes_the_context() -> None:
    raw = msgpack.packb([[[b"e", [[b"r", 2]]]], [], [[b"r", 1], [b"r", 2], [b"q", 5]]])
    s = orset.decode(raw)
    assert s.vv == {b"r": 2}
    assert s.cloud == {(b"q", 5)}


@given(st.binary(max_size=64))
def test_garbage_never_escapes_as_another_error(data: bytes) -> None:
    for decode in (orset.decode, lww.decode, lww.decode_map, sync.decode_digest,
                   sync.decode_listing, sync.decode_delta):
        with contextlib.suppress(DecodeError):
            decode(data)


MALFORMED_ORSETS = [
    b"",
    b"\xc1",  # never used in msgpack
    msgpack.packb([[], [], []]) + b"\x00",  # trailing bytes
    msgpack.packb({"a": 1}),
    msgpack.packb([[], []]),
    msgpack.packb([[[b"e", [[b"r", 1]]]], [], []]),  # dot outside the context
    msgpack.packb([[[b"e", []]], [], []]),  # element without dots
    msgpack.packb([[[b"e", [[b"r", 1]]], [b"e", [[b"r", 1]]]], [[b"r", 1]], []]),
    msgpack.packb([[[b"e", [[b"r", 1]]], [b"f", [[b"r", 1]]]], [[b"r", 1]], []]),
    msgpack.packb([[], [[b"r", 0]], []]),  # dot numbers start at 1
    msgpack.packb([[], [[b"r", True]], []]),
    msgpack.packb([[], [[b"r", 1], [b"r", 2]], []]),  # replica twice
    msgpack.packb([[], [["r", 1]], []]),  # str, not bytes
    msgpack.packb([[], [[b"", 1]], []]),  # empty replica id
    msgpack.packb([[[b"x" * 2000, [[b"r", 1]]]], [[b"r", 1]], []]),
    msgpack.packb([[], [], [[b"r", n] for n in range(1, orset.MAX_DOTS + 2)]]),
    b"\x91" * 100_000,  # deep nesting
    b"\x00" * (orset.MAX_ENCODED_BYTES + 1),
]


@pytest.mark.parametrize("data", MALFORMED_ORSETS)
def test_malformed_orset_raises(data: bytes) -> None:
    with pytest.raises(DecodeError):
        orset.decode(data)


@pytest.mark.parametrize("data", [
    msgpack.packb([1, b"w"]),
    msgpack.packb([-1, b"w", b"v"]),
    msgpack.packb([2**63, b"w", b"v"]),
    msgpack.packb([1, b"w" * 65, b"v"]),
    msgpack.packb([1.0, b"w", b"v"]),
])
def test_malformed_register_raises(data: bytes) -> None:
    with pytest.raises(DecodeError):
        lww.decode(data)


def test_malformed_maps_and_messages_raise() -> None:
    dup = msgpack.packb([[b"k", 1, b"w", b"v"], [b"k", 2, b"w", b"v"]])
    with pytest.raises(DecodeError):
        lww.decode_map(dup)
    with pytest.raises(DecodeError):
        sync.decode_digest(msgpack.packb([b"\x00" * 16, [b"\x00" * 16] * 3]))
    with pytest.raises(DecodeError):
        sync.decode_listing(msgpack.packb([[b"k", b"short"]]))
    with pytest.raises(DecodeError):
        sync.decode_delta(msgpack.packb([[b"k", b"v"]] * (sync.MAX_DELTA_ITEMS + 1)))


# --- sync ---------------------------------------------------------------------------

items = st.dictionaries(st.binary(min_size=1, max_size=6), st.binary(max_size=4), max_size=40)


def hashes(m: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    return {k: sync.item_hash(v) for k, v in m.items()}


def exchange(a: dict[bytes, bytes], b: dict[bytes, bytes]) -> tuple[list[bytes], list[bytes]]:
    """One round between two replicas whose items merge by `max`, through the wire codecs."""
    da = sync.decode_digest(sync.encode_digest(sync.summarize(hashes(a))))
    db = sync.summarize(hashes(b))
    if da.root == sync.decode_digest(sync.encode_digest(sync.brief(db))).root:
        return [], []
    idx = sync.differing(da, db)
    la = sync.decode_listing(sync.encode_listing(sync.listing(hashes(a), idx)))
    send, request = sync.plan(sync.listing(hashes(b), idx), la)  # b's point of view
    for keys, src, dst in ((send, b, a), (request, a, b)):
        for run in sync.page(keys, 7):
            delta = sync.decode_delta(sync.encode_delta({k: src[k] for k in run}))
            for k, v in delta.items():
                dst[k] = max(dst.get(k, v), v)
    return send, request


@given(items)
def test_digest_depends_only_on_contents(m: dict[bytes, bytes]) -> None:
    h = hashes(m)
    d = sync.summarize(h)
    assert sync.summarize(dict(reversed(h.items()))) == d
    assert sync.differing(d, d) == []
    assert len(sync.encode_digest(sync.brief(d))) <= 24
    assert len(d.buckets) == sync.FANOUT


@given(items, items)
def test_exchange_converges_and_moves_only_differences(a: dict[bytes, bytes],
                                                       b: dict[bytes, bytes]) -> None:
    expected = {k: max(v for v in (a.get(k), b.get(k)) if v is not None) for k in a | b}
    differ = {k for k in a | b if a.get(k) != b.get(k)}
    send, request = exchange(a, b)
    assert set(send) | set(request) == differ
    assert a == b == expected
    assert exchange(a, b) == ([], [])


@given(items, st.integers(0, sync.FANOUT - 1))
def test_one_changed_item_names_one_bucket(m: dict[bytes, bytes], salt: int) -> None:
    key = b"new" + bytes([salt])
    d1 = sync.summarize(hashes(m))
    d2 = sync.summarize(hashes({**m, key: b"changed"}))
    assert sync.differing(d1, d2) == [sync.bucket_of(key)]
    assert sync.differing(sync.brief(d1), d2) == list(range(sync.FANOUT))


def test_page_bounds_every_run() -> None:
    keys = [bytes([i]) for i in range(10)]
    assert sync.page(keys, 4) == [keys[:4], keys[4:8], keys[8:]]
    assert sync.page([], 4) == []
    with pytest.raises(ValueError, match="positive"):
        sync.page(keys, 0)
