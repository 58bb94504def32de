"""DHT values: codec round trips, forgeries refused, merge laws, the SQLite store."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.codec import (
    KIND_BUCKET,
    KIND_CONTENT,
    MAX_BUCKET_BYTES,
    MAX_BUCKET_ENTRIES,
    MAX_ENTRY_BYTES,
    MAX_VOTE_BYTES,
    MAX_VOTES,
    Content,
    IndexEntry,
    cosine_estimate,
    decode_bucket,
    decode_content,
    dht_id,
    embedding_bits,
    encode_bucket,
    encode_content,
    hamming_similarity,
    make_entry,
    merge_buckets,
    merge_content,
    merge_values,
    node_dht_id,
    validate_value,
)
from dht.values import QuotaExceeded, ValueStore
from p2pnode.errors import VerifyError
from p2pnode.identity import Identity
from p2pnode.records import MemoryRecord, make_memory, make_vote

ALICE = Identity.from_seed(b"alice")
BOB = Identity.from_seed(b"bob")
MALLORY = Identity.from_seed(b"mallory")
VOTERS = [Identity.from_seed(b"voter%d" % i) for i in range(3)]
REGIONS = [b"r" * 32, b"s" * 32]
EMB = np.linspace(-1, 1, 384, dtype=np.float32)
T0 = 1_700_000_000_000


def _memory(answer: str = "Debian is a free OS.") -> MemoryRecord:
    return make_memory(ALICE, question="What is Debian?", answer=answer, embedding=EMB,
                       created_ms=T0, origin="taught", dna_hash=b"d" * 32)


MEM = _memory()
OTHER = _memory("Something else.")


def _mid(i: int) -> bytes:
    return bytes([i]) * 32


def _entry(i: int, up: int = 0, down: int = 0, who: Identity = ALICE,
           created: int = T0) -> IndexEntry:
    return make_entry(who, _mid(i), EMB, up, down, created)


# A pool of signed entries: 6 ids, several fitness claims (and two authors) each.
POOL = [_entry(i, up, down, who, T0 + i + extra)
        for i in range(6)
        for (up, down, who, extra) in [(0, 0, ALICE, 0), (2, 0, ALICE, 0), (0, 3, ALICE, 0),
                                       (1, 1, BOB, 5), (5, 1, BOB, 0), (0, 0, BOB, 7)]]
# Votes for MEM: 3 voters × 2 regions × seq 1..3, and an equivocation at seq 3.
VOTES = [make_vote(v, memory_id=MEM.id, region=r, qvec=b"q" * 388, up=s, down=s // 2, seq=s)
         for v in VOTERS for r in REGIONS for s in (1, 2, 3)]
VOTES.append(make_vote(VOTERS[0], memory_id=MEM.id, region=REGIONS[0], qvec=b"x" * 388,
                       up=0, down=3, seq=3))

entry_lists = st.lists(st.sampled_from(POOL), max_size=12)
caps = st.integers(1, 5)


def _forge(body_fields: list[object], sig: bytes) -> bytes:
    body = msgpack.packb(body_fields, use_bin_type=True)
    return KIND_BUCKET + bytes(msgpack.packb([[body, sig]], use_bin_type=True))


# --- ids and bits --------------------------------------------------------------------

def test_dht_ids_are_160_bits_and_come_from_one_mapping() -> None:
    key = _mid(1)
    assert dht_id(key) == hashlib.sha256(b"sporemind/dht-id/v1" + key).digest()[:20]
    assert node_dht_id(ALICE.public_key) == ALICE.node_id[:20]
    with pytest.raises(VerifyError):
        dht_id(b"short")


def test_sign_bits_estimate_similarity() -> None:
    bits = embedding_bits(EMB)
    assert len(bits) == 48
    assert hamming_similarity(bits, bits) == 1.0
    assert cosine_estimate(bits, embedding_bits(-EMB)) == pytest.approx(-1.0)


# --- buckets -------------------------------------------------------------------------

def test_bucket_round_trip_and_sizes() -> None:
    entries = [_entry(i, up=i) for i in range(5)]
    value = encode_bucket(entries)
    assert value[:1] == KIND_BUCKET
    assert sorted(decode_bucket(value), key=lambda e: e.memory_id) == entries
    assert validate_value(_mid(9), value) == ("bucket", value)
    huge = (1 << 63) - 1
    full = [make_entry(ALICE, _mid(i), EMB, huge, huge, huge) for i in range(32)]
    assert {len(e.wire) for e in full} == {MAX_ENTRY_BYTES}
    assert len(encode_bucket(full)) == MAX_BUCKET_BYTES < 8000


def test_forged_entries_refuse_the_whole_bucket() -> None:
    good = _entry(1)
    fields: list[object] = ["index", 1, good.memory_id, good.bits, good.author, 0, 0, T0]
    bad_sig = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    altered_bits = [*fields[:3], bytes(48), *fields[4:]]
    wrong_author = [*fields[:4], MALLORY.public_key, *fields[5:]]
    inflated = [*fields[:5], 1000, *fields[6:]]
    assert decode_bucket(_forge(fields, good.signature)) == [good]
    for forged in (_forge(fields, bad_sig), _forge(altered_bits, good.signature),
                   _forge(wrong_author, good.signature), _forge(inflated, good.signature)):
        with pytest.raises(VerifyError):
            decode_bucket(forged)
    one_bad = msgpack.unpackb(_forge(wrong_author, good.signature)[1:])
    mixed = KIND_BUCKET + msgpack.packb([[_entry(2).body, _entry(2).signature], *one_bad])
    with pytest.raises(VerifyError):
        decode_bucket(mixed)


def test_bucket_structure_and_caps() -> None:
    twice = KIND_BUCKET + msgpack.packb([[_entry(1).body, _entry(1).signature]] * 2)
    with pytest.raises(VerifyError, match="twice"):
        decode_bucket(twice)
    many = encode_bucket([_entry(i) for i in range(10)])
    with pytest.raises(VerifyError):
        decode_bucket(many, max_entries=4)
    with pytest.raises(VerifyError):
        decode_bucket(KIND_BUCKET + b"\x00" * (MAX_BUCKET_BYTES + 1))
    with pytest.raises(VerifyError):
        validate_value(_mid(1), KIND_BUCKET + msgpack.packb([]))
    assert len(decode_bucket(encode_bucket([_entry(i) for i in range(40)]))) == MAX_BUCKET_ENTRIES


@given(entry_lists, entry_lists, caps)
def test_merge_buckets_commutes(a: list[IndexEntry], b: list[IndexEntry], cap: int) -> None:
    a, b = merge_buckets(a, [], cap), merge_buckets(b, [], cap)
    assert merge_buckets(a, b, cap) == merge_buckets(b, a, cap)


@given(entry_lists, entry_lists, entry_lists, caps)
def test_merge_buckets_associates(a: list[IndexEntry], b: list[IndexEntry],
                                  c: list[IndexEntry], cap: int) -> None:
    a, b, c = (merge_buckets(x, [], cap) for x in (a, b, c))
    left = merge_buckets(merge_buckets(a, b, cap), c, cap)
    assert left == merge_buckets(a, merge_buckets(b, c, cap), cap)
    assert left == merge_buckets([*a, *b, *c], [], cap)  # any grouping = all at once


@given(entry_lists, caps)
def test_merge_buckets_is_idempotent(a: list[IndexEntry], cap: int) -> None:
    a = merge_buckets(a, [], cap)
    assert merge_buckets(a, a, cap) == a == merge_buckets(a, [], cap)


@given(entry_lists, entry_lists, caps)
def test_merge_buckets_is_bounded_and_shares_by_author(
        a: list[IndexEntry], b: list[IndexEntry], cap: int) -> None:
    out = merge_buckets(a, b, cap)
    slots = {e.slot for e in (*a, *b)}
    kept = {e.slot for e in out}
    assert len(out) == min(cap, len(slots))
    if len(slots) <= cap:
        assert kept == slots  # never drops an entry while under the cap
    authors = {author for _, author in slots}
    for author in authors:  # the fair share: min(its entries, cap // authors)
        mine = sum(s[1] == author for s in slots)
        assert sum(s[1] == author for s in kept) >= min(mine, cap // len(authors))
    assert [e.slot for e in out] == sorted(e.slot for e in out)  # canonical order


@settings(max_examples=50)
@given(st.lists(st.sampled_from(POOL), max_size=20), st.randoms(use_true_random=False))
def test_bucket_replicas_converge_under_any_delivery(items: list[IndexEntry],
                                                     rnd: random.Random) -> None:
    """Two replicas get the same entries, reordered, duplicated, in other batches."""
    replicas: list[list[IndexEntry]] = [[], []]
    for r in range(2):
        stream = items + rnd.sample(items, len(items) // 2)  # duplicates
        rnd.shuffle(stream)
        while stream:
            n = rnd.randint(1, 4)
            replicas[r] = merge_buckets(replicas[r], stream[:n], 4)
            stream = stream[n:]
    assert replicas[0] == replicas[1] == merge_buckets(items, [], 4)


# --- content -------------------------------------------------------------------------

def _older(votes: list[int]) -> bytes:
    """A content value as an older spore could write it: with votes."""
    return KIND_CONTENT + bytes(msgpack.packb([MEM.wire, [VOTES[i].wire for i in votes]]))


def test_content_round_trip() -> None:
    value = encode_content(MEM.wire)
    content = decode_content(value, MEM.id)
    assert content.memory == MEM and content.id == MEM.id
    assert validate_value(MEM.id, value) == ("content", value)
    assert msgpack.unpackb(value[1:]) == [MEM.wire, []]  # the shape older spores decode


def test_an_older_spores_content_with_votes_decodes_and_its_votes_are_ignored() -> None:
    older, canonical = _older(list(range(len(VOTES)))), encode_content(MEM.wire)
    assert decode_content(older, MEM.id) == decode_content(canonical, MEM.id)
    assert validate_value(MEM.id, older) == ("content", canonical)  # stored without them
    assert merge_values(MEM.id, older, canonical) == canonical
    assert merge_values(MEM.id, canonical, older) == canonical


def test_content_under_the_wrong_key_or_with_unbounded_votes_is_refused() -> None:
    value = encode_content(MEM.wire)
    with pytest.raises(VerifyError, match="content key"):
        decode_content(value, OTHER.id)
    too_many = KIND_CONTENT + msgpack.packb([MEM.wire, [VOTES[0].wire] * (MAX_VOTES + 1)])
    with pytest.raises(VerifyError, match="more than"):
        decode_content(too_many, MEM.id)
    for bad_vote in (b"v" * (MAX_VOTE_BYTES + 1), 7, "text", [b"v"]):
        with pytest.raises(VerifyError, match="more than"):
            decode_content(KIND_CONTENT + msgpack.packb([MEM.wire, [bad_vote]]), MEM.id)
    with pytest.raises(VerifyError):
        merge_content(decode_content(value, MEM.id),
                      decode_content(encode_content(OTHER.wire), OTHER.id))


vote_idx = st.lists(st.integers(0, len(VOTES) - 1), max_size=10)


@given(vote_idx, vote_idx, vote_idx)
def test_merge_content_is_a_join(a: list[int], b: list[int], c: list[int]) -> None:
    x, y, z = (decode_content(_older(v), MEM.id) for v in (a, b, c))
    assert merge_content(x, y) == merge_content(y, x)
    assert merge_content(merge_content(x, y), z) == merge_content(x, merge_content(y, z))
    assert merge_content(x, x) == x
    assert merge_content(x, y) == Content(MEM)


# --- values the network layer hands over ----------------------------------------------

kinds = st.sampled_from([b"", KIND_BUCKET, KIND_CONTENT, b"X"])
msgpack_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=70)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@settings(max_examples=300)
@given(kinds, st.binary(max_size=400) | msgpack_junk.map(msgpack.packb))
def test_garbage_only_ever_raises_verify_error(kind: bytes, tail: bytes) -> None:
    data = kind + tail
    for call in (lambda: decode_bucket(data), lambda: decode_content(data, MEM.id),
                 lambda: validate_value(MEM.id, data),
                 lambda: merge_values(MEM.id, encode_content(MEM.wire), data),
                 lambda: merge_values(_mid(1), encode_bucket([_entry(1)]), data)):
        with pytest.raises(VerifyError):
            call()


def test_merge_values_by_kind() -> None:
    b1, b2 = encode_bucket([_entry(1)]), encode_bucket([_entry(2, up=3)])
    assert merge_values(_mid(9), b1, b2) == encode_bucket([_entry(1), _entry(2, up=3)])
    c1, c2 = encode_content(MEM.wire), _older([0, 1])
    assert merge_values(MEM.id, c1, c2) == merge_values(MEM.id, c2, c1) == c1
    # content proves its key; a bucket squatting on a memory id gives way, never the reverse
    assert merge_values(MEM.id, b1, c1) == c1
    with pytest.raises(VerifyError):
        merge_values(MEM.id, c1, b1)


# --- the SQLite store ----------------------------------------------------------------

PEER, PEER2 = b"p" * 20, b"q" * 20


def test_store_puts_merges_and_survives_reopen(tmp_path: Path) -> None:
    store = ValueStore(tmp_path / "values.sqlite3")
    b1, b2 = encode_bucket([_entry(1)]), encode_bucket([_entry(2)])
    content = encode_content(MEM.wire)
    assert store.put(_mid(9), b1, PEER, T0)
    assert not store.put(_mid(9), b1, PEER, T0 + 1)  # a refresh
    assert store.put(_mid(9), b2, PEER2, T0 + 2)
    assert store.put(MEM.id, content, PEER, T0)
    assert store.get(_mid(9)) == encode_bucket([_entry(1), _entry(2)])
    assert store.get(b"\x00" * 32) is None
    stats = store.stats()
    store.close()
    again = ValueStore(tmp_path / "values.sqlite3")
    assert again.get(MEM.id) == content and again.stats() == stats
    assert stats["count"] == 2 and stats["bucket_count"] == stats["content_count"] == 1
    assert stats["bytes"] == stats["bucket_bytes"] + stats["content_bytes"]
    assert sorted(again.keys()) == sorted([_mid(9), MEM.id])
    again.close()


def test_store_never_holds_a_forged_value(tmp_path: Path) -> None:
    store = ValueStore(tmp_path / "v.sqlite3")
    good = _entry(1)
    forged = _forge(["index", 1, good.memory_id, good.bits, MALLORY.public_key, 0, 0, T0],
                    good.signature)
    with pytest.raises(VerifyError):
        store.put(_mid(9), forged, PEER, T0)
    assert store.get(_mid(9)) is None and store.stats()["count"] == 0
    store.put(_mid(9), encode_bucket([good]), PEER, T0)
    for bad in (forged, encode_content(MEM.wire), b"garbage"):
        with pytest.raises(VerifyError):
            store.put(_mid(9), bad, PEER, T0 + 1)
    assert store.get(_mid(9)) == encode_bucket([good])
    store.close()


def test_store_quotas_keep_earlier_values(tmp_path: Path) -> None:
    one = len(encode_bucket([_entry(1)]))
    store = ValueStore(tmp_path / "v.sqlite3", per_publisher_bytes=2 * one,
                       total_bytes=3 * one)
    store.put(_mid(10), encode_bucket([_entry(1)]), PEER, T0)
    store.put(_mid(11), encode_bucket([_entry(2)]), PEER, T0)
    with pytest.raises(QuotaExceeded, match="publisher"):
        store.put(_mid(12), encode_bucket([_entry(3)]), PEER, T0)
    with pytest.raises(QuotaExceeded, match="publisher"):  # growing a value counts too
        store.put(_mid(11), encode_bucket([_entry(4)]), PEER, T0)
    store.put(_mid(12), encode_bucket([_entry(3)]), PEER2, T0)
    with pytest.raises(QuotaExceeded, match="store"):
        store.put(_mid(13), encode_bucket([_entry(5)]), PEER2, T0)
    assert store.get(_mid(13)) is None and store.get(_mid(12)) is not None
    assert store.get(_mid(11)) == encode_bucket([_entry(2)])
    assert store.stats()["bytes"] == 3 * one
    store.close()


def test_expire_removes_only_stale_values(tmp_path: Path) -> None:
    one = len(encode_bucket([_entry(1)]))
    store = ValueStore(tmp_path / "v.sqlite3", per_publisher_bytes=2 * one)
    store.put(_mid(10), encode_bucket([_entry(1)]), PEER, T0)
    store.put(_mid(11), encode_bucket([_entry(2)]), PEER, T0)
    store.put(_mid(10), encode_bucket([_entry(1)]), PEER, T0 + 900)  # republished
    assert store.expire(T0 + 1500, ttl_ms=1000) == 1
    assert store.keys() == [_mid(10)]
    assert store.expire(T0 + 1500, ttl_ms=1000) == 0
    store.put(_mid(12), encode_bucket([_entry(3)]), PEER, T0 + 1500)  # quota freed
    assert store.stats()["count"] == 2
    store.close()
