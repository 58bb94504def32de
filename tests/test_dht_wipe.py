"""Issue 10 item 14: the DHT index could be wiped by claims.

512 buckets × 32 entries claiming up = 2**63 − 1 evicted every honest entry.
Now a full bucket is shared round-robin by author, in hash orders nobody's
claims enter (dht.codec.merge_buckets). Pure tests of the rule, then the
attack on an in-process swarm with the real codec and SQLite stores.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.codec import (
    MAX_BUCKET_ENTRIES,
    MAX_SKEW_MS,
    IndexEntry,
    decode_bucket,
    dht_id,
    encode_bucket,
    make_entry,
    merge_buckets,
    merge_values,
    node_dht_id,
    validate_value,
)
from dht.config import ValueRules
from dht.fake import FakeNetwork
from dht.keys import bucket_key
from dht.server import SporeDHT
from dht.values import QuotaExceeded, ValueStore
from p2pnode.errors import VerifyError
from p2pnode.identity import Identity
from tests.test_dht_contract import FAST, run, stop_all

HUGE = (1 << 63) - 1
T0 = 1_700_000_000_000
EMB = np.linspace(-1, 1, 384, dtype=np.float32)
KEY = hashlib.sha256(b"a bucket").digest()
HONEST = [Identity.from_seed(b"honest %d" % i) for i in range(16)]
MALLORY = Identity.from_seed(b"mallory")
SYBILS = [Identity.from_seed(b"sybil %d" % i) for i in range(32)]


def _mid(tag: bytes) -> bytes:
    return hashlib.sha256(tag).digest()


def honest(author: int, n: int) -> list[IndexEntry]:
    who = HONEST[author]
    return [make_entry(who, _mid(b"h%d/%d" % (author, i)), EMB, 0, 0, T0 + i)
            for i in range(n)]


def forged(n: int = MAX_BUCKET_ENTRIES, who: Identity = MALLORY, up: int = HUGE,
           down: int = 0, created: int = HUGE, tag: bytes = b"m") -> list[IndexEntry]:
    return [make_entry(who, _mid(tag + b"%d" % i), EMB, up, down, created) for i in range(n)]


def slots(entries: list[IndexEntry]) -> set[tuple[bytes, bytes]]:
    return {e.slot for e in entries}


def count(entries: list[IndexEntry], who: Identity) -> int:
    return sum(e.author == who.public_key for e in entries)


# --- the rule: claims do not decide ---------------------------------------------------

@pytest.mark.parametrize(("authors", "each", "safe"), [
    (1, 32, 16),  # one honest author with a full bucket keeps half
    (3, 10, 8),  # 4 authors: everyone keeps cap // 4 = 8 at least
    (7, 4, 4),  # 7 × 4 + Mallory's 4 = 32: no honest entry lost
    (15, 2, 2),
])
def test_huge_claims_win_only_the_writers_share(authors: int, each: int, safe: int) -> None:
    good = [e for a in range(authors) for e in honest(a, each)]
    for attack in (forged(), forged(up=0, down=HUGE, created=0)):
        for kept in (merge_buckets(good, attack, salt=KEY),
                     merge_buckets(attack, good, salt=KEY),
                     decode_bucket(merge_values(KEY, encode_bucket(good, salt=KEY),
                                                encode_bucket(attack, salt=KEY)))):
            assert len(kept) == MAX_BUCKET_ENTRIES
            for a in range(authors):
                assert count(kept, HONEST[a]) >= min(each, safe)
            assert count(kept, MALLORY) <= MAX_BUCKET_ENTRIES - authors * min(each, safe)


def test_an_empty_bucket_fills_but_newcomers_still_get_in() -> None:
    full = merge_buckets(forged(), [], salt=KEY)
    assert count(full, MALLORY) == MAX_BUCKET_ENTRIES  # room nobody else wants is used
    after = merge_buckets(full, honest(0, 1) + honest(1, 1), salt=KEY)
    assert slots(honest(0, 1) + honest(1, 1)) <= slots(after)  # a first entry beats a 31st


def test_someone_elses_entry_for_my_memory_never_replaces_mine() -> None:
    mine = honest(0, 3)
    copies = [make_entry(MALLORY, e.memory_id, -EMB, HUGE, HUGE, HUGE) for e in mine]
    kept = merge_buckets(mine, copies + forged(29), salt=KEY)
    assert slots(mine) <= slots(kept)
    assert count(kept, MALLORY) == MAX_BUCKET_ENTRIES - 3  # the copies are Mallory's share
    value = encode_bucket(kept, salt=KEY)
    assert validate_value(KEY, value) == ("bucket", value)  # one memory, two authors: legal


def test_a_bucket_of_sybils_is_decided_by_hashes_not_claims() -> None:
    """What the per-author share cannot do: 32 fresh keys with one entry each
    compete with honest authors' first entries, and the salted author hash
    decides who stays. Membership and trust (DESIGN 5b) must bound Sybils."""
    good = [e for a in range(4) for e in honest(a, 1)]
    sybil = [forged(1, who, tag=b"s%d" % i)[0] for i, who in enumerate(SYBILS)]
    quiet = [forged(1, who, up=0, created=T0, tag=b"s%d" % i)[0] for i, who in enumerate(SYBILS)]
    survivors = set()
    for b in range(16):
        salt = hashlib.sha256(b"bucket %d" % b).digest()
        kept = merge_buckets(good, sybil, salt=salt)
        assert len(kept) == MAX_BUCKET_ENTRIES
        assert {e.memory_id for e in merge_buckets(good, quiet, salt=salt)} == {
            e.memory_id for e in kept}  # the claims changed nothing
        survivors |= {e.author for e in kept if e in good}
    assert len(survivors) == 4  # nobody is last in every bucket


# --- the rule is still a join ---------------------------------------------------------

AUTHORS = [*HONEST[:3], MALLORY, *SYBILS[:2]]
# Two signings per slot (other claims), 3 memories shared by two authors.
POOL = [make_entry(who, _mid(b"p%d" % (i % 9)), EMB, up, 0, T0 + extra)
        for i, who in enumerate(AUTHORS * 3)
        for up, extra in ((0, 0), (HUGE, 5))]
pool_lists = st.lists(st.sampled_from(POOL), max_size=24)
caps = st.integers(1, 8)
salts = st.sampled_from([b"", KEY, b"x" * 32])


@settings(max_examples=200)
@given(pool_lists, pool_lists, pool_lists, caps, salts)
def test_merge_is_commutative_associative_idempotent(
        a: list[IndexEntry], b: list[IndexEntry], c: list[IndexEntry], cap: int,
        salt: bytes) -> None:
    def m(x: list[IndexEntry], y: list[IndexEntry]) -> list[IndexEntry]:
        return merge_buckets(x, y, cap, salt=salt)

    a, b, c = m(a, []), m(b, []), m(c, [])
    assert m(a, b) == m(b, a)
    assert m(m(a, b), c) == m(a, m(b, c)) == m([*a, *b, *c], [])
    assert m(a, a) == a
    offered, kept = slots([*a, *b, *c]), slots(m(m(a, b), c))
    authors = {author for _, author in offered}
    for author in authors:  # the fair share holds after any merges
        mine = sum(s[1] == author for s in offered)
        assert sum(s[1] == author for s in kept) >= min(mine, cap // len(authors))


@settings(max_examples=200)
@given(pool_lists, caps, salts, st.data())
def test_claims_never_change_which_slots_stay(entries: list[IndexEntry], cap: int,
                                              salt: bytes, data: st.DataObject) -> None:
    claim = st.integers(0, HUGE)
    resigned = [make_entry(_who(e), e.memory_id, EMB,
                           data.draw(claim), data.draw(claim), data.draw(claim))
                for e in entries]
    assert slots(merge_buckets(entries, [], cap, salt=salt)) == slots(
        merge_buckets(resigned, [], cap, salt=salt))


def _who(e: IndexEntry) -> Identity:
    return next(who for who in AUTHORS if who.public_key == e.author)


# --- dates ---------------------------------------------------------------------------

def test_entries_dated_in_the_future_are_not_stored(tmp_path: Path) -> None:
    now = T0 + 10**6
    late = forged(3, created=now + MAX_SKEW_MS + 1)
    ok = honest(0, 2)
    _, value = validate_value(KEY, encode_bucket(late + ok), now_ms=now)
    assert slots(decode_bucket(value)) == slots(ok)
    with pytest.raises(VerifyError, match="future"):
        validate_value(KEY, encode_bucket(late), now_ms=now)
    just = forged(1, created=now + MAX_SKEW_MS)
    assert validate_value(KEY, encode_bucket(just), now_ms=now)[0] == "bucket"
    store = ValueStore(tmp_path / "v.sqlite3")
    store.put(KEY, encode_bucket(ok), b"p" * 20, now)
    store.put(KEY, encode_bucket(late + honest(1, 1)), b"q" * 20, now)  # merge path
    held = store.get(KEY)
    assert held is not None and slots(decode_bucket(held)) == slots(ok + honest(1, 1))
    with pytest.raises(VerifyError):
        store.put(KEY, encode_bucket(late), b"q" * 20, now)
    store.close()


def test_store_quotas_still_bound_a_flooding_writer(tmp_path: Path) -> None:
    one_full = len(encode_bucket(forged(), salt=KEY))
    store = ValueStore(tmp_path / "v.sqlite3", per_publisher_bytes=4 * one_full,
                       total_bytes=64 * one_full)
    keys = [hashlib.sha256(b"k%d" % i).digest() for i in range(8)]
    for k in keys:
        store.put(k, encode_bucket(honest(0, 2), salt=k), b"h" * 20, T0)
    taken = 0
    for k in keys:
        try:
            store.put(k, encode_bucket(forged(created=T0), salt=k), b"m" * 20, T0)
            taken += 1
        except QuotaExceeded:
            pass
    assert taken == 4  # charged for the whole merged value it last put
    for k in keys:
        held = store.get(k)
        assert held is not None and slots(honest(0, 2)) <= slots(decode_bucket(held))
    store.close()


# --- the attack on a swarm -------------------------------------------------------------

CODEC_RULES = ValueRules(validate=validate_value, merge=merge_values, key_id=dht_id,
                         node_id=node_dht_id)
DNA = hashlib.sha256(b"wipe swarm").digest()
SEED = b"s" * 16
TABLES, CODES = 8, 64  # the default LSH shape: 512 buckets


def test_a_wipe_of_every_bucket_leaves_honest_memories_findable(tmp_path: Path) -> None:
    async def body() -> None:
        net = FakeNetwork()
        nodes, stores = [], []
        for i in range(8):
            store = ValueStore(tmp_path / f"n{i}.sqlite3")
            stores.append(store)
            node = SporeDHT(identity=Identity.from_seed(b"wipe node %d" % i), dna_hash=DNA,
                            store=store, rules=CODEC_RULES, config=FAST, bind=net.bind)
            await node.start(f"10.0.0.{i + 1}", 0)
            nodes.append(node)
        for node in nodes[1:]:
            await node.bootstrap([nodes[0].address])
        attacker, authors, reader = nodes[7], nodes[1:3], nodes[5]
        buckets = [bucket_key(SEED, t, c) for t in range(TABLES) for c in range(CODES)]
        homes = buckets[::37]  # 14 buckets, spread over the tables
        now = int(time.time() * 1000)
        try:
            mine: dict[bytes, list[IndexEntry]] = {}
            for k in homes:
                for a, node in enumerate(authors):
                    entries = [make_entry(node.identity, _mid(k + b"%d/%d" % (a, i)), EMB,
                                          0, 0, now) for i in range(3)]
                    mine.setdefault(k, []).extend(entries)
                    assert await node.put(k, encode_bucket(entries, salt=k)) >= 2
            wipe = encode_bucket(forged(who=attacker.identity, created=now))
            started = time.monotonic()
            for k in buckets:
                assert await attacker.put(k, wipe) >= 2
            took = time.monotonic() - started
            for k in homes:
                got = await reader.get(k)
                assert got is not None
                kept = decode_bucket(got)
                assert slots(mine[k]) <= slots(kept), "an honest entry was evicted"
                assert count(kept, attacker.identity) == MAX_BUCKET_ENTRIES - 6
            print(f"wipe of {len(buckets)} buckets took {took:.1f} s")
        finally:
            await stop_all(nodes)
            for store in stores:
                store.close()

    run(body, timeout_s=60)
