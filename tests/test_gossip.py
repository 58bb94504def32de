"""Gossip without processes: signed requests, the replicated store, one round.

The store is the real one (SQLite file, real validators of signed records);
the transport is a direct call, which the process tests replace with HTTP.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from crdt import sync
from dht import compact
from p2pnode import dna as dna_mod
from p2pnode.errors import SporeError, StateError
from p2pnode.gossip import (
    KIND_DNA,
    KIND_PEER,
    GossipStore,
    Membership,
    agent_key,
    exchange,
    vote_key,
)
from p2pnode.identity import Identity
from p2pnode.peerauth import Refused, Verifier, sign_reply, sign_request, verify_reply
from p2pnode.peers import validators
from p2pnode.records import make_agent_card, make_peer, make_vote

FOUNDER = Identity.from_seed(b"founder")
DNA = dna_mod.found(FOUNDER, swarm="test", encoder_name="e", encoder_sha256="00" * 32, dim=4,
                    created_ms=1)
OTHER = dna_mod.found(FOUNDER, swarm="other", encoder_name="e", encoder_sha256="00" * 32,
                      dim=4, created_ms=1)
T0 = 1_700_000_000_000


def store(path: Path | None = None, dna: dna_mod.Dna = DNA) -> GossipStore:
    current = [dna]
    s = GossipStore(validators(dna.swarm_id, lambda: current[0]), path)
    s.offer({KIND_DNA: dna_mod.chain_wire([dna])})
    return s


QVEC = compact.pack(np.ones(4, np.int8), 0.25)  # a compact question vector at the DNA's dim


def vote(voter: Identity, memory: bytes, seq: int, up: int = 1) -> tuple[bytes, bytes]:
    v = make_vote(voter, memory_id=memory, region=bytes(32), qvec=QVEC, up=up, down=seq - up,
                  seq=seq)
    return vote_key(memory, voter.public_key, bytes(32)), v.wire


# --- signed requests ---------------------------------------------------------------------

def test_a_signed_request_verifies_once_then_is_a_replay() -> None:
    me, verifier = Identity.from_seed(b"a"), Verifier(DNA.swarm_id)
    nonce = os.urandom(16)
    headers = sign_request(me, DNA.swarm_id, "POST", "/peer/v1/sync", b"body", T0, nonce)
    assert verifier.check(headers, "POST", "/peer/v1/sync", b"body", T0 + 5) == me.public_key
    with pytest.raises(Refused) as replay:
        verifier.check(headers, "POST", "/peer/v1/sync", b"body", T0 + 6)
    assert replay.value.reason == "replay"


@pytest.mark.parametrize(("change", "reason"), [
    ({"body": b"other"}, "bad_signature"),
    ({"path": "/peer/v1/delta"}, "bad_signature"),
    ({"now": T0 + 31_000}, "stale"),
    ({"now": T0 - 31_000}, "stale"),
    ({"swarm": OTHER.swarm_id}, "another_swarm"),
    ({"drop": "Spore-Signature"}, "unsigned"),
    ({"garble": "Spore-Key"}, "malformed"),
])
def test_what_a_verifier_refuses(change: dict[str, object], reason: str) -> None:
    me = Identity.from_seed(b"a")
    swarm = change.get("swarm", DNA.swarm_id)
    assert isinstance(swarm, bytes)
    headers = sign_request(me, swarm, "POST", "/peer/v1/sync", b"body", T0, os.urandom(16))
    if "drop" in change:
        del headers[str(change["drop"])]
    if "garble" in change:
        headers[str(change["garble"])] = "zz"
    body = change.get("body", b"body")
    path = change.get("path", "/peer/v1/sync")
    now = change.get("now", T0)
    assert isinstance(body, bytes) and isinstance(path, str) and isinstance(now, int)
    with pytest.raises(Refused) as refused:
        Verifier(DNA.swarm_id).check(headers, "POST", path, body, now)
    assert refused.value.reason == reason


def test_replies_are_bound_to_their_request() -> None:
    me, nonce = Identity.from_seed(b"b"), os.urandom(16)
    headers = sign_reply(me, nonce, b"reply")
    assert verify_reply(headers, nonce, b"reply", me.public_key) == me.public_key
    for other_nonce, body in ((os.urandom(16), b"reply"), (nonce, b"altered")):
        with pytest.raises(Refused):
            verify_reply(headers, other_nonce, body)


def test_nonces_are_forgotten_once_outside_the_window() -> None:
    me, verifier = Identity.from_seed(b"c"), Verifier(DNA.swarm_id, max_nonces=4)
    for i in range(20):  # a full cache of old nonces never refuses new requests
        h = sign_request(me, DNA.swarm_id, "POST", "/p", b"", T0 + i * 40_000, os.urandom(16))
        verifier.check(h, "POST", "/p", b"", T0 + i * 40_000)
    assert len(verifier._seen) == 1


# --- the store ---------------------------------------------------------------------------

def test_items_are_validated_merged_by_stamp_and_persisted(tmp_path: Path) -> None:
    s = store(tmp_path / "g.sqlite3")
    voter, memory = Identity.from_seed(b"v"), os.urandom(32)
    k2, v2 = vote(voter, memory, 2)
    k1, v1 = vote(voter, memory, 1)
    assert k1 == k2
    assert [a.stamp for a in s.offer({k2: v2})] == [2]
    assert s.offer({k1: v1}) == []  # older: loses the merge
    assert s.offer({k2: v2}) == []  # the same again: idempotent
    forged = v2[:-3] + bytes([v2[-3] ^ 1]) + v2[-2:]
    assert s.offer({k2: forged}) == []
    wrong_key = os.urandom(1) + k2[1:]
    assert s.offer({b"V" + os.urandom(48): v2, b"Z" + wrong_key: v2}) == []
    assert s.counters["refused_unknown_kind"] == 1
    assert sum(n for k, n in s.counters.items() if k.startswith("refused_")) >= 3
    s.close()
    again = store(tmp_path / "g.sqlite3")
    assert again.get(k2) == v2 and again.digest() == s.digest()


def test_a_peer_card_of_another_swarm_or_key_is_refused() -> None:
    s, node = store(), Identity.from_seed(b"p")
    card = make_peer(node, swarm=OTHER.swarm_id, host="127.0.0.1", port=7151, capacity=1,
                     seq=1)
    assert s.offer({KIND_PEER + card.node_id: card.wire}) == []
    good = make_peer(node, swarm=DNA.swarm_id, host="127.0.0.1", port=7151, capacity=1, seq=1)
    assert s.offer({KIND_PEER + os.urandom(32): good.wire}) == []
    assert len(s.offer({KIND_PEER + good.node_id: good.wire})) == 1


def test_agent_cards_are_the_hosts_own_and_spread_by_seq() -> None:
    a, b, host = store(), store(), Identity.from_seed(b"host")
    agent = os.urandom(32)

    def card(seq: int, signer: Identity = host, swarm: bytes = DNA.swarm_id) -> bytes:
        return make_agent_card(signer, agent_id=agent, swarm=swarm, generation=1,
                               parent=b"", fitness=0.5, interactions=seq, specialty=bytes(8),
                               alive=True, seq=seq).wire

    key = agent_key(host.public_key, agent)
    assert len(a.offer({key: card(2)})) == 1
    assert a.offer({key: card(1)}) == []
    thief = Identity.from_seed(b"thief")  # writing under another host's key
    assert a.offer({key: card(9, signer=thief)}) == []
    assert a.offer({agent_key(thief.public_key, agent): card(9, swarm=OTHER.swarm_id)}) == []
    asyncio.run(exchange(b, _direct(a)))
    assert b.get(key) == card(2)


def test_dna_items_follow_the_founders_rules() -> None:
    s = store()
    newer = dna_mod.update(DNA, FOUNDER, {"division_threshold": 30}, 2)
    chain = dna_mod.chain_wire([DNA, newer])
    assert [a.record[-1].version for a in s.offer({KIND_DNA: chain})] == [2]
    assert s.offer({KIND_DNA: dna_mod.chain_wire([DNA])}) == []  # the old version loses
    assert s.offer({KIND_DNA: dna_mod.chain_wire([OTHER])}) == []  # another swarm: refused
    assert s.offer({KIND_DNA: newer.wire}) == []  # a version alone, not its chain: refused
    assert s.counters["refused_dna_chain"] == 2
    intruder = Identity.from_seed(b"intruder")
    with pytest.raises(StateError, match="founder"):
        dna_mod.update(DNA, intruder, {"division_threshold": 31}, 3)


# --- one round ---------------------------------------------------------------------------

def _direct(responder: GossipStore):  # type: ignore[no-untyped-def]
    async def call(route: str, body: bytes) -> bytes:
        if route == "sync":
            return responder.answer_sync(body)
        reply, _ = responder.answer_delta(body)
        return reply
    return call


def test_one_round_makes_two_replicas_equal_both_ways() -> None:
    a, b = store(), store()
    voters = [Identity.from_seed(b"voter %d" % i) for i in range(30)]
    memories = [os.urandom(32) for _ in range(5)]
    for i, voter in enumerate(voters):
        target = a if i % 2 else b
        target.offer(dict([vote(voter, memories[i % 5], 1 + i % 3)]))
    assert a.digest() != b.digest()
    stats = asyncio.run(exchange(a, _direct(b)))
    assert not stats.same and stats.sent > 0 and stats.received > 0
    assert a.digest() == b.digest() and a.items == b.items
    again = asyncio.run(exchange(a, _direct(b)))
    assert again.same and again.sent == again.received == 0


def test_the_bucketed_digest_is_the_plain_one_at_every_step() -> None:
    s = store()
    voters = [Identity.from_seed(b"voter %d" % i) for i in range(40)]
    memory = os.urandom(32)
    for i, voter in enumerate(voters):
        s.offer(dict([vote(voter, memory, 1 + i % 3)]))
        assert s.digest() == sync.summarize(s.hashes)
    for voter in voters[:10]:  # newer seqs replace items in place
        s.offer(dict([vote(voter, memory, 9)]))
        assert s.digest() == sync.summarize(s.hashes)
    fresh = store().digest()
    buckets, listing = msgpack.unpackb(s.answer_sync(sync.encode_digest(fresh)))
    assert sorted(buckets) == sync.differing(s.digest(), fresh)  # listed in random order
    assert sync.decode_listing(listing) == sync.listing(s.hashes, buckets)


def test_equal_replicas_settle_in_one_small_message_however_many_items() -> None:
    sizes = []
    for n in (10, 400):
        a, b = store(), store()
        for i in range(n):
            item = dict([vote(Identity.from_seed(b"x%d" % i), bytes(32), 1)])
            a.offer(item)
            b.offer(item)
        sent: list[int] = []

        async def call(route: str, body: bytes, b: GossipStore = b,
                       sent: list[int] = sent) -> bytes:
            sent.append(len(body))
            return b.answer_sync(body)
        assert asyncio.run(exchange(a, call)).same
        sizes.append(sum(sent))
    assert sizes[0] == sizes[1] < 1200


def test_garbage_from_a_peer_is_a_decode_error_not_a_crash() -> None:
    s = store()
    for body in (b"", b"\xff" * 100, os.urandom(2000)):
        with pytest.raises(sync.DecodeError):
            s.answer_sync(body)
        with pytest.raises(sync.DecodeError):
            s.answer_delta(body)


# --- membership --------------------------------------------------------------------------

def test_a_silent_peer_is_suspected_dropped_probed_and_readmitted() -> None:
    m = Membership(("127.0.0.1", 1), random.Random(1))
    quiet, other = m.know("127.0.0.1", 2), m.know("127.0.0.1", 3)
    for _ in range(2):
        m.failed(quiet, "timeout")
    assert quiet.state == "suspect" and quiet in m.live()
    for _ in range(2):
        m.failed(quiet, "timeout")
    assert quiet.state == "dropped" and quiet not in m.live()
    m.ok(other, 1.0)
    picks = [m.pick() for _ in range(50)]
    assert 0 < picks.count(quiet) <= 50 // 5 + 1  # probed now and then only
    m.ok(quiet, 2.0)
    assert quiet.state == "alive" and quiet in m.live()
    assert m.pick({("127.0.0.1", 2), ("127.0.0.1", 3)}) is None


def test_a_fresh_replica_catches_up_on_thousands_of_items_page_by_page() -> None:
    a, b = store(), store()
    voters = [Identity.from_seed(b"many %d" % i) for i in range(2)]  # 4,096 a voter at most
    items = dict(vote(voters[i % 2], os.urandom(32), 1) for i in range(5000))
    a.offer(items)
    rounds = 0
    while a.items != b.items:  # more than one listing (4096) and many deltas (256) of work
        rounds += 1
        assert rounds <= 40, f"not converged after {rounds - 1} rounds"
        asyncio.run(exchange(b, _direct(a)))
    assert rounds >= 5000 // 256 and a.counters.get("listing_paged", 0) >= 1


def test_the_gossip_loop_stops_when_cancelled_amid_news() -> None:
    """A cancel racing with news must end the loop (a daemon that swallowed it
    never stopped)."""
    from p2pnode.peers import PeerService

    async def nothing(_: list[Any]) -> None:
        return None

    async def scenario() -> None:
        svc = PeerService(identity=Identity.from_seed(b"loop"), swarm=DNA.swarm_id,
                          store=store(), host="127.0.0.1", port=9, seeds=[], interval_s=0.01,
                          contacts=list, on_accepted=nothing)
        for i in range(100):
            task = asyncio.ensure_future(svc.run())
            for _ in range(i % 7):
                await asyncio.sleep(0)
            svc.store.on_change()  # news, as the cancel arrives
            task.cancel()
            svc.store.on_change()
            done, _ = await asyncio.wait([task], timeout=2)
            assert done and task.cancelled()

    asyncio.run(scenario())


def test_a_refusal_is_probed_and_ends_when_an_exchange_verifies() -> None:
    m = Membership(("127.0.0.1", 1), random.Random(2))
    refuser, other = m.know("127.0.0.1", 2), m.know("127.0.0.1", 3)
    m.ok(other, 1.0)
    refuser.refused = "bad_signature"
    assert refuser.state == "refused" and refuser not in m.live()
    picks = [m.pick() for _ in range(50)]
    assert 0 < picks.count(refuser) <= 50 // 5 + 1  # probed now and then, not forgotten
    m.ok(refuser, 2.0)
    assert refuser.state == "alive" and refuser.refused is None and refuser in m.live()


def test_a_reply_longer_than_one_read_verifies() -> None:
    """Agent genomes (~400 KB) come back in many TCP reads: the whole reply
    must be read before its signature is checked (a cut one made honest
    peers refuse each other: 'bad sporemind/peer-reply/v1 signature')."""
    from p2pnode.errors import VerifyError
    from p2pnode.gossip import MAX_BODY
    from p2pnode.peers import PeerService
    from tests.conftest import free_udp_port

    big = os.urandom(MAX_BODY + 1)

    async def nothing(_: list[Any]) -> None:
        return None

    async def scenario() -> None:
        svcs = []
        for i in range(2):
            port = free_udp_port()
            svc = PeerService(identity=Identity.from_seed(b"big%d" % i), swarm=DNA.swarm_id,
                              store=store(), host="127.0.0.1", port=port, seeds=[],
                              interval_s=60, contacts=list, on_accepted=nothing)
            await svc.start("127.0.0.1")
            svcs.append(svc)
        server, client = svcs

        async def route(_key: bytes, body: bytes) -> bytes:
            return big[: int(body)]

        server.routes["big"] = route
        try:
            for size in (10, 70_000, 500_000):
                got = await client.request("127.0.0.1", server.port, "big", b"%d" % size, 10)
                assert got == big[:size]
            with pytest.raises(VerifyError, match="over"):  # bounded all the same
                await client.request("127.0.0.1", server.port, "big", b"%d" % len(big), 10)
            assert not any(k.startswith("refused") for k in client.counters)
        finally:
            for svc in svcs:
                await svc.stop()

    asyncio.run(scenario())


def test_rounds_go_to_hosts_not_to_how_many_keys_a_host_runs() -> None:
    """A thousand ports (identities) behind one address get that address's
    share of our rounds, not a thousand shares (libp2p's peer diversity)."""
    m = Membership(("127.0.0.1", 1), random.Random(3), max_members=2048)
    for port in range(2, 1002):
        m.know("10.6.6.6", port)
    m.know("10.0.0.2", 7151)
    m.know("10.0.0.3", 7151)
    picks = [m.pick() for _ in range(3000)]
    honest = sum(p is not None and p.host != "10.6.6.6" for p in picks)
    # three hosts: two honest of three; a pick by member would give them 2 in 1002
    assert honest > 0.55 * len(picks), honest


def test_a_spore_that_missed_versions_verifies_the_newest_through_the_chain() -> None:
    """v2 adds a founder, who signs v3: a store still at v1 takes v3 with its
    chain (a version alone, as before the chain, could not be checked)."""
    second = Identity.from_seed(b"second founder")
    v2 = dna_mod.update(DNA, FOUNDER, {"founders": [FOUNDER.public_key.hex(),
                                                    second.public_key.hex()]}, 2)
    v3 = dna_mod.update(v2, second, {"division_threshold": 33}, 3)
    s = store()
    accepted = s.offer({KIND_DNA: dna_mod.chain_wire([DNA, v2, v3])})
    assert [a.record[-1].hash for a in accepted] == [v3.hash]
    assert dna_mod.newest_from(DNA, accepted[0].record) == v3
    # a chain with a link left out does not pass
    assert s.offer({KIND_DNA: dna_mod.chain_wire([DNA, v3])}) == []
    assert s.counters["refused_dna_chain"] == 1
    # the first founder retired by the second: still one chain, verified from v1
    v4 = dna_mod.update(v3, second, {"founders": [second.public_key.hex()]}, 4)
    assert [a.record[-1].version for a in
            s.offer({KIND_DNA: dna_mod.chain_wire([DNA, v2, v3, v4])})] == [4]


def test_our_own_vote_is_synced_and_a_failed_write_of_it_raises(tmp_path: Path) -> None:
    """A peer's item whose write fails is counted (peers send it again); our
    own vote, about to be acknowledged, is committed with synchronous=FULL
    and a failed write raises: the rating is refused, never acknowledged
    and lost."""
    s = store(tmp_path / "g.sqlite3")
    db = s._db
    assert db is not None
    full: list[int] = []
    db.set_trace_callback(lambda sql: full.append(1) if sql == "PRAGMA synchronous=FULL" else None)
    voters = [Identity.from_seed(b"durable %d" % i) for i in range(3)]
    s.offer(dict([vote(voters[0], b"a" * 32, 1)]), durable=True)
    assert full and db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL again
    s.offer(dict([vote(voters[1], b"b" * 32, 1)]))  # a peer's: NORMAL
    assert len(full) == 1
    db.execute("PRAGMA query_only=ON")  # every write now fails
    s.offer(dict([vote(voters[1], b"c" * 32, 1)]))
    assert s.counters["persist_errors"] == 1
    with pytest.raises(SporeError, match=r"readonly|read-only|query_only"):
        s.offer(dict([vote(voters[2], b"d" * 32, 1)]), durable=True)
    assert s.counters["persist_errors"] == 2
    db.execute("PRAGMA query_only=OFF")
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1
    reopened = store(tmp_path / "g.sqlite3")
    assert vote_key(b"a" * 32, voters[0].public_key, bytes(32)) in reopened.items


def test_a_newer_item_is_written_in_place(tmp_path: Path) -> None:
    """A re-rating updates its row where it is (same rowid: one leaf page in
    the WAL), not a delete and an append (three)."""
    s = store(tmp_path / "g.sqlite3")
    assert s._db is not None
    voter, memory = Identity.from_seed(b"again"), os.urandom(32)
    k1, v1 = vote(voter, memory, 1)
    s.offer({k1: v1}, durable=True)
    [(rowid, stored)] = s._db.execute("SELECT rowid, item FROM items WHERE key=?", (k1,))
    _, v3 = vote(voter, memory, 3)
    s.offer({k1: v3}, durable=True)
    assert s._db.execute("SELECT rowid, item FROM items WHERE key=?", (k1,)).fetchall() == [
        (rowid, v3)] and stored == v1
    s.close()
    assert store(tmp_path / "g.sqlite3").get(k1) == v3
