"""The DHT under hostile input, on real UDP sockets (NOTES.md's kademlia table).

Each test runs on a fresh loop whose exception handler fails the test on any
unhandled task exception (see tests.test_dht_contract.run).
"""

from __future__ import annotations

import gc
import os
import random
import socket
import tracemalloc
from typing import Any, ClassVar

import msgpack

from dht.guard import (
    MAX_DATAGRAM,
    MAX_KEYS,
    STALE_S,
    Admissions,
    Peer,
    SendCredit,
    TokenBuckets,
    reason_of,
    sanitise_contacts,
    sanitise_values,
    well_formed_request,
)
from dht.protocol import WHO_ARE_YOU, SporeProtocol
from dht.server import DhtConfig, SporeDHT
from p2pnode.errors import VerifyError
from tests.test_dht_contract import (
    FAST,
    Net,
    frame,
    key,
    run,
    start_node,
    stop_all,
    swarm,
    until,
)

UDP = Net()
FLOOD = 10_000
CHUNK = 10  # datagrams sent before waiting for the node to read them (no kernel drops)
MEMORY_BUDGET = 200_000  # bytes still held after the flood (measured: ~8 KB)


def hostile_datagram(rng: random.Random) -> bytes:
    """One of: noise, a truncated request, an oversize datagram, a well-framed lie."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 1:
        whole = frame("store", [rng.randbytes(32), b"ok:" + rng.randbytes(rng.randrange(600))])
        return whole[: rng.randrange(len(whole))]
    if kind == 2:
        return b"\x00" + rng.randbytes(20 + rng.randrange(MAX_DATAGRAM, 2 * MAX_DATAGRAM))
    if kind == 3:
        shapes: list[Any] = [["store", [1, 2]], ["nope", []], {"a": 1}, ["ping"], 7,
                             ["find_node", [rng.randbytes(19)]], ["challenge", [b"", b"", b""]]]
        return b"\x00" + rng.randbytes(20) + msgpack.packb(rng.choice(shapes))
    if kind == 4:
        return b"\x00" + rng.randbytes(20) + b"\x91" * 2000 + b"\xc1"  # deep nesting
    return b"\x01" + rng.randbytes(20) + msgpack.packb([b"unasked", 1])  # stray response


def test_garbage_flood_keeps_the_node_answering() -> None:
    async def body() -> None:
        # The rate limiter reads this clock: 1 ms passes per chunk, i.e. the attackers
        # send 5,000 datagrams/s each however fast this machine is.
        clock = [0.0]
        config = DhtConfig(rpc_timeout_s=0.4, max_contacts_per_ip=1000,
                           rate_per_s=500, rate_burst=50)
        node = await start_node(UDP, 0, config, clock=lambda: clock[0])
        friend = await start_node(UDP, 1, config)
        attackers = []
        for host in ("127.0.0.2", "127.0.0.3"):  # other IPs: the friend keeps its own budget
            attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            attacker.bind((host, 0))
            attackers.append(attacker)
        try:
            await friend.bootstrap([node.address])
            k = key("flood")
            await friend.put(k, b"ok:still here")
            rng = random.Random(20240611)
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            start = node.counters["datagrams"]
            for sent in range(CHUNK, FLOOD + 1, CHUNK):
                clock[0] += 0.001
                for i in range(CHUNK):
                    attackers[i % 2].sendto(hostile_datagram(rng), node.address)
                await until(lambda n=sent: node.counters["datagrams"] >= start + n,  # type: ignore[misc]
                            "the node to read the flood", poll_s=0)
                if sent % 2000 == 0:  # it keeps serving its peers meanwhile
                    assert await friend.get(k) == b"ok:still here"
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            assert grown < MEMORY_BUDGET, f"{grown} bytes kept after the flood"
            counters = node.counters
            for dropped in ("oversize", "decode_errors", "malformed_requests", "rate_limited",
                            "unexpected_responses"):
                assert counters.get(dropped, 0) > 0, (dropped, counters)
            assert counters.get("handler_errors", 0) == 0
            assert await friend.get(k) == b"ok:still here"
        finally:
            if tracemalloc.is_tracing():
                tracemalloc.stop()
            for attacker in attackers:
                attacker.close()
            await stop_all([node, friend])

    run(body)


class RogueProtocol(SporeProtocol):
    """An admitted peer that answers lookups with garbage and lies about stores."""

    rng: ClassVar[random.Random] = random.Random(7)
    live: ClassVar[list[tuple[str, int]]] = []

    def rpc_find_node(self, sender: Any, key: bytes) -> object:
        fake_ids = [[os.urandom(20), ip, port] for ip, port in self.live[:15]]
        return self.rng.choice([
            [*fake_ids, [os.urandom(20), "127.0.0.1", 9]],  # well formed, all lies
            [[b"short", "127.0.0.1", 1]], [[os.urandom(20), "not an ip", 80]],
            list(range(200)), None, 7, "garbage", {"value": b"ok:lie"}])

    def rpc_find_value(self, sender: Any, key32: bytes) -> object:
        return self.rng.choice([b"forged", b"ok", [1, 2], {"x": 1}, 3.5])

    def rpc_find_values(self, sender: Any, keys: list[bytes]) -> object:
        return self.rng.choice([[b"forged"] * len(keys), [b"ok"], [None, 1.5] * 40, {"x": 1},
                                [True] * len(keys), [[b"ok:nested"]] * len(keys), 3])

    def rpc_store(self, sender: Any, key32: bytes, value: bytes) -> object:
        return True


class RogueDHT(SporeDHT):
    protocol_class = RogueProtocol


def test_peers_answering_garbage_do_not_break_put_and_get() -> None:
    async def body() -> None:
        good = await swarm(UDP, 10)
        rogues = [await start_node(UDP, 100 + i, cls=RogueDHT) for i in range(3)]
        RogueProtocol.live = [n.address for n in good]
        try:
            for rogue in rogues:
                await rogue.bootstrap([good[0].address])
            for node in good:
                await node.bootstrap([rogues[0].address])
            values = {key(f"r{i}"): b"ok:%d" % i for i in range(6)}
            for i, (k, v) in enumerate(values.items()):
                assert await good[i].put(k, v) >= 2
            for node in good:
                assert [await node.get(k) for k in values] == list(values.values())
                for width in (1, None):
                    assert await node.get_many(values, width=width) == values
            refused = sum(n.counters.get("malformed_responses", 0)
                          + n.counters.get("contact_id_mismatch", 0) for n in good)
            assert refused > 0
            assert all(n.counters.get("handler_errors", 0) == 0 for n in good)
        finally:
            await stop_all([*good, *rogues])

    run(body)


def test_forged_store_from_a_raw_socket_is_rejected_and_never_served() -> None:
    async def body() -> None:
        nodes = await swarm(UDP, 4)
        transport, recorder = await UDP.raw()
        k = key("forged")
        try:
            for value in (b"forged", b"ok:but from nobody"):
                transport.sendto(frame("store", [k, value]), nodes[0].address)
            await until(lambda: len(recorder.received) == 2, "both STOREs answered")
            answers = [msgpack.unpackb(d[21:]) for d in recorder.received]
            assert answers == [False, WHO_ARE_YOU]
            reason = reason_of(VerifyError("forged value without the ok prefix"))
            assert nodes[0].counters.get(f"rejected_{reason}") == 1
            assert nodes[0].counters.get("rejected_unadmitted") == 1
            assert all(n.storage.get(k) is None for n in nodes)
            nodes[2].storage.values[k] = b"forged"  # a holder that went bad
            assert await nodes[0].get(k) is None
            assert nodes[0].counters.get(f"rejected_fetch_{reason}", 0) >= 1
            assert await nodes[1].locate(k) == []
        finally:
            transport.close()
            await stop_all(nodes)

    run(body)


def test_pings_with_self_chosen_ids_add_at_most_the_per_ip_cap() -> None:
    async def body() -> None:
        capped = DhtConfig(rpc_timeout_s=0.4, max_contacts_per_ip=4, rate_per_s=1e6,
                           rate_burst=1e6)
        target = await start_node(UDP, 0, capped)
        others = [await start_node(UDP, i, FAST) for i in range(1, 11)]
        transport, recorder = await UDP.raw()
        try:
            for sent in range(100, 1001, 100):
                for _ in range(100):
                    transport.sendto(frame("ping", [os.urandom(20)]), target.address)
                await until(lambda n=sent: len(recorder.received) >= n,  # type: ignore[misc]
                            "the pings answered")
            assert target.contacts() == []
            for other in others:
                await other.bootstrap([target.address])
            assert 1 <= len(target.contacts()) <= 4
            assert target.counters.get("refused_ip_cap", 0) >= 1
        finally:
            transport.close()
            await stop_all([target, *others])

    run(body)


def test_unadmitted_sender_gets_no_amplification() -> None:
    async def body() -> None:
        nodes = await swarm(UDP, 3)
        transport, recorder = await UDP.raw()
        try:
            k = key("amplify")
            await nodes[1].put(k, b"ok:" + bytes(4000))  # a big value to ask for
            requests = [frame("ping", [os.urandom(20)]),
                        frame("find_node", [os.urandom(20)]),
                        frame("find_value", [k]),
                        frame("store", [k, b"ok:x"]),
                        frame("challenge", [os.urandom(16), os.urandom(20), b""]),
                        frame("challenge", [os.urandom(16), os.urandom(20), bytes(320)])]
            for request in requests:
                transport.sendto(request, nodes[0].address)
            # Everything but the unpadded challenge is answered, plus one counter-challenge.
            await until(lambda: len(recorder.received) >= 6, "the replies")
            last = frame("ping", [os.urandom(20)])
            transport.sendto(last, nodes[0].address)
            await until(lambda: any(d[1:21] == last[1:21] for d in recorder.received),
                        "a last round trip")
            by_id = {r[1:21]: len(r) for r in [*requests, last]}
            replies = [d for d in recorder.received if d[:1] == b"\x01"]
            assert all(len(d) <= by_id[d[1:21]] for d in replies)
            assert sum(map(len, recorder.received)) <= sum(by_id.values())
            assert len(replies) == 6  # the 75-byte challenge got nothing back
            assert nodes[0].counters.get("amplification_capped", 0) >= 1
        finally:
            transport.close()
            await stop_all(nodes)

    run(body)


def test_send_credit_is_never_banked_across_datagrams() -> None:
    credit = SendCredit(max_sources=2)
    a = ("10.0.0.1", 1)
    credit.earn(a, 50)
    assert credit.spend(a, 43) and not credit.spend(a, 8)
    credit.earn(a, 75)  # the 7 bytes left over from the ping are gone
    assert not credit.spend(a, 157) and credit.spend(a, 75)
    for port in range(2, 5):  # a flood of spoofed sources forgets the oldest
        credit.earn(("10.0.0.1", port), 500)
    assert not credit.spend(a, 1)


def test_token_bucket_refills_with_the_clock() -> None:
    now = [0.0]
    limits = TokenBuckets(rate_per_s=10, burst=3, max_sources=8, clock=lambda: now[0])
    assert [limits.take("a") for _ in range(4)] == [True, True, True, False]
    assert limits.take("b")  # per source
    now[0] += 0.1
    assert limits.take("a") and not limits.take("a")


def test_admissions_cap_per_ip_and_follow_keys() -> None:
    adm = Admissions(per_ip=2, total=3)
    peer = lambda i, ip, port: Peer(bytes([i]) * 20, b"k" * 32, (ip, port), 0.0)  # noqa: E731
    assert adm.admit(peer(1, "a", 1)) == (None, [])
    assert adm.admit(peer(2, "a", 2))[0] is None
    assert adm.admit(peer(3, "a", 3)) == ("ip_cap", [])
    refused, replaced = adm.admit(peer(4, "a", 2))  # a new key at a known address
    assert refused is None and [p.id for p in replaced] == [bytes([2]) * 20]
    refused, replaced = adm.admit(peer(1, "b", 9))  # a known key at a new address
    assert refused is None and adm.get(("a", 1)) is None and adm.get(("b", 9)) is not None
    assert adm.admit(peer(5, "c", 1))[0] is None
    assert adm.admit(peer(6, "d", 1)) == ("full", [])


def test_sanitise_contacts_accepts_only_sane_triples() -> None:
    good = [b"i" * 20, "127.0.0.1", 4000]
    assert sanitise_contacts([good], 20) == [(b"i" * 20, "127.0.0.1", 4000)]
    for bad in ([[b"i" * 19, "127.0.0.1", 1]], [[b"i" * 20, "nowhere", 1]],
                [[b"i" * 20, "224.0.0.1", 1]], [[b"i" * 20, "0.0.0.0", 1]],
                [[b"i" * 20, "127.0.0.1", True]], [[b"i" * 20, "127.0.0.1", 0]],
                [good] * 21, [good, 7], {"a": 1}, None):
        assert sanitise_contacts(bad, 20) is None, bad


def test_a_full_table_makes_room_for_newcomers_only_over_silent_peers() -> None:
    adm = Admissions(per_ip=2, total=3)

    def peer(n: int, ip: str, seen: float) -> Peer:
        return Peer(bytes([n]) * 20, bytes([n]) * 32, (ip, 1000 + n), seen)

    assert adm.admit(peer(1, "10.0.0.1", 0.0))[0] is None
    assert adm.admit(peer(2, "10.0.0.1", 10.0))[0] is None
    assert adm.admit(peer(3, "10.0.0.2", 20.0))[0] is None
    # everyone heard from recently: the caps hold
    assert adm.admit(peer(4, "10.0.0.1", 100.0)) == ("ip_cap", [])
    assert adm.admit(peer(5, "10.0.0.3", 100.0)) == ("full", [])
    # long after, the stalest of the same IP (for the per-IP cap) makes room
    refused, gone = adm.admit(peer(4, "10.0.0.1", STALE_S + 5.0))
    assert refused is None and [p.id for p in gone] == [bytes([1]) * 20]
    # and the stalest of all for the total cap
    refused, gone = adm.admit(peer(5, "10.0.0.3", STALE_S + 15.0))
    assert refused is None and [p.id for p in gone] == [bytes([2]) * 20]
    assert len(adm) == 3


def test_find_values_requests_of_the_wrong_shape_are_malformed() -> None:
    k = os.urandom(32)
    assert well_formed_request(["find_values", [[k] * MAX_KEYS]]) == (
        "find_values", [[k] * MAX_KEYS])
    for args in ([[]], [[k] * (MAX_KEYS + 1)], [[k[:31]]], [[k, "text"]], [k], [[k], [k]]):
        assert well_formed_request(["find_values", args]) is None
    assert sanitise_values([b"v", None, False], 3) == [b"v", None, False]
    for answer in ([b"v"], [b"v", True, None], [[b"v"], None, None], "x", None):
        assert sanitise_values(answer, 3) is None
