"""One DHT contract, two transports: real UDP on 127.0.0.1 and dht.fake (STYLE.md 7).

The values are a toy (b"ok:" + anything, the larger wins a merge) and the
store lives in memory, so this suite tests the network layer alone.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from kademlia.node import Node

from dht.fake import TOY_RULES, FakeNetwork, MemoryStore
from dht.server import Bind, DhtConfig, SporeDHT, bind_udp
from p2pnode.identity import Identity

DNA = hashlib.sha256(b"contract swarm").digest()
# Loopback runs every node on one IP: lift the per-IP cap and rate limit.
FAST = DhtConfig(rpc_timeout_s=0.4, max_contacts_per_ip=1000, rate_per_s=1e6, rate_burst=1e6)


RULES = TOY_RULES


def key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def frame(name: str, args: list[Any], msg_id: bytes | None = None) -> bytes:
    """A request datagram as any peer (or attacker) would send it."""
    return b"\x00" + (msg_id or os.urandom(20)) + msgpack.packb([name, args], use_bin_type=True)


def run(test: Callable[[], Coroutine[Any, Any, None]], timeout_s: float = 40.0) -> None:
    """Run `test` on a fresh loop; fail on anything the loop reports (unhandled errors)."""
    reported: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        try:
            await asyncio.wait_for(test(), timeout_s)
        finally:
            gc.collect()  # "Task exception was never retrieved" shows up now, not later

    asyncio.run(main())
    assert not reported, reported


async def until(condition: Callable[[], bool], what: str, deadline_s: float = 5.0,
                poll_s: float = 0.005) -> None:
    """Wait for `condition` with a deadline (never a bare sleep before an assert)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        await asyncio.sleep(poll_s)


class Recorder(asyncio.DatagramProtocol):
    """A raw endpoint: remembers what it receives, answers nothing."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)


@dataclass
class Net:
    """How nodes reach each other: real UDP on loopback, or a FakeNetwork."""

    fake: FakeNetwork | None = None

    @property
    def bind(self) -> Bind:
        return self.fake.bind if self.fake is not None else bind_udp

    def host(self, i: int) -> str:
        return f"10.0.{i // 250}.{i % 250 + 1}" if self.fake is not None else "127.0.0.1"

    async def raw(self, i: int = 999) -> tuple[Any, Recorder]:
        recorder = Recorder()
        transport = await self.bind(lambda: recorder, self.host(i), 0)
        return transport, recorder


async def start_node(net: Net, i: int, config: DhtConfig = FAST, dna: bytes = DNA,
                     cls: type[SporeDHT] = SporeDHT, **world: Any) -> SporeDHT:
    node = cls(identity=Identity.from_seed(b"node %d" % i), dna_hash=dna, store=MemoryStore(),
               rules=RULES, config=config, bind=net.bind, **world)
    await node.start(net.host(i), 0)
    return node


async def swarm(net: Net, n: int, config: DhtConfig = FAST) -> list[SporeDHT]:
    nodes = [await start_node(net, i, config) for i in range(n)]
    for node in nodes[1:]:
        await node.bootstrap([nodes[0].address])
    return nodes


async def stop_all(nodes: list[SporeDHT]) -> None:
    await asyncio.gather(*(n.stop() for n in nodes))


def table_ids(node: SporeDHT) -> set[str]:
    return {c.node_id for c in node.contacts()}


@pytest.fixture(params=["udp", "fake"])
def net(request: pytest.FixtureRequest) -> Net:
    return Net(FakeNetwork() if request.param == "fake" else None)


def test_put_then_get_from_every_node(net: Net) -> None:
    async def body() -> None:
        nodes = await swarm(net, 20)
        try:
            values = {key(f"k{i}"): b"ok:%d" % i for i in range(5)}
            for i, (k, v) in enumerate(values.items()):
                assert await nodes[(7 * i) % 20].put(k, v) >= 2
            for node in nodes:
                assert [await node.get(k) for k in values] == list(values.values())
            assert await nodes[3].get(key("never stored")) is None
        finally:
            await stop_all(nodes)

    run(body)


def test_value_lands_on_exactly_the_three_closest(net: Net) -> None:
    async def body() -> None:
        nodes = await swarm(net, 20)
        try:
            k = key("three")
            assert await nodes[4].put(k, b"ok:3") == 3
            target = int.from_bytes(RULES.key_id(k), "big")
            closest = sorted(nodes, key=lambda n: int.from_bytes(n.node_id, "big") ^ target)
            want = sorted(n.node_id.hex() for n in closest[:3])
            assert sorted(n.node_id.hex() for n in nodes if n.storage.get(k)) == want
            for node in nodes[::4]:  # every viewpoint finds the same three
                assert sorted(h[0] for h in await node.locate(k)) == want
        finally:
            await stop_all(nodes)

    run(body)


def test_get_survives_all_holders_but_one_stopping(net: Net) -> None:
    async def body() -> None:
        nodes = await swarm(net, 20)
        try:
            k = key("survivor")
            await nodes[0].put(k, b"ok:alive")
            held = {h[0] for h in await nodes[0].locate(k)}
            holders = [n for n in nodes if n.node_id.hex() in held]
            assert len(holders) == 3
            await stop_all(holders[:2])
            alive = [n for n in nodes if n not in holders[:2]]
            got = await asyncio.gather(*(n.get(k) for n in alive))
            assert got == [b"ok:alive"] * len(alive)
            await until(lambda: sum(n.counters.get("repaired", 0) for n in alive) >= 2,
                        "read repair to refill the replicas")
            await until(lambda: sum(n.storage.get(k) is not None for n in alive) >= 3,
                        "three live holders again")
            assert len(await alive[-1].locate(k)) == 3
        finally:
            await stop_all(nodes)

    run(body)


def test_node_with_another_dna_is_never_admitted(net: Net) -> None:
    async def body() -> None:
        nodes = await swarm(net, 6)
        stranger = await start_node(net, 50, dna=hashlib.sha256(b"other swarm").digest())
        try:
            assert await stranger.bootstrap([nodes[0].address]) == 0
            assert await nodes[1].bootstrap([stranger.address]) == 0
            await until(lambda: nodes[0].counters.get("refused_dna_mismatch", 0) >= 1,
                        "the swarm to refuse the stranger's answer")
            assert stranger.counters.get("refused_dna_mismatch", 0) >= 1
            assert stranger.contacts() == []
            assert all(stranger.node_id.hex() not in table_ids(n) for n in nodes)
        finally:
            await stop_all([*nodes, stranger])

    run(body)


def test_unadmitted_ids_never_enter_routing_tables(net: Net) -> None:
    async def body() -> None:
        nodes = await swarm(net, 8)
        transport, recorder = await net.raw()
        try:
            forged = [os.urandom(20) for _ in range(40)]
            for i, fid in enumerate(forged):
                transport.sendto(frame("ping", [fid]), nodes[i % 8].address)
                transport.sendto(frame("find_node", [fid]), nodes[i % 8].address)
            await until(lambda: len(recorder.received) >= 80, "every request answered")
            genuine = {n.node_id.hex() for n in nodes}
            for node in nodes:
                assert table_ids(node) == genuine - {node.node_id.hex()}
        finally:
            transport.close()
            await stop_all(nodes)

    run(body)


def test_fake_network_loss_and_partition_controls() -> None:
    async def body() -> None:
        fake = FakeNetwork(loss=0.0)
        net = Net(fake)
        nodes = await swarm(net, 6)
        try:
            k = key("split")
            await nodes[0].put(k, b"ok:before")
            fake.partition([n.address for n in nodes[:3]], [n.address for n in nodes[3:]])
            assert nodes[5].counters.get("timeouts", 0) == 0
            await nodes[5].get(k)  # across the cut: nothing arrives, peers time out
            assert fake.counters["partitioned"] > 0 and nodes[5].counters["timeouts"] > 0
            fake.heal()
            fake.loss = 1.0
            sent = fake.counters["lost"]
            await nodes[1].lookup(nodes[2].node_id)
            assert fake.counters["lost"] > sent
        finally:
            await stop_all(nodes)

    run(body)


def test_a_silent_contact_is_forgotten_only_after_timeouts_in_a_row(net: Net) -> None:
    from dht.protocol import EVICT_AFTER

    async def body() -> None:
        a, b = await swarm(net, 2)
        try:
            peer = (b.address[0], b.address[1])
            assert b.node_id.hex() in table_ids(a)
            await b.stop()  # silent from now on
            for i in range(EVICT_AFTER):
                assert b.node_id.hex() in table_ids(a), f"forgotten after {i} timeouts"
                ok, _ = await a.proto.request(peer, "ping", [a.node_id])
                assert not ok
            assert b.node_id.hex() not in table_ids(a)
        finally:
            await a.stop()

    run(body)


def test_get_many_reads_many_keys_in_fewer_datagrams_than_keys(net: Net) -> None:
    async def body() -> None:
        nodes = await swarm(net, 20)
        try:
            values = {key(f"m{i}"): b"ok:%d" % i for i in range(30)}
            for i, (k, v) in enumerate(values.items()):
                assert await nodes[i % 20].put(k, v) >= 2
            reader, absent = nodes[11], key("never stored")
            for width in (1, None):
                before = reader.counters["datagrams"]
                got = await reader.get_many([*values, absent], width=width)
                assert got == {**values, absent: None}
                answers = reader.counters["datagrams"] - before
                assert answers < len(values) // (1 if width is None else 2)
            assert reader.counters["batched_gets"] == 2 * (len(values) + 1)
        finally:
            await stop_all(nodes)

    run(body)


def test_get_many_goes_on_to_the_replicas_that_hold_it(net: Net) -> None:
    async def body() -> None:
        nodes = await swarm(net, 20)
        try:
            k = key("on one replica")
            assert await nodes[2].put(k, b"ok:kept") == 3
            holders = [n for n in nodes if n.storage.get(k) is not None]
            for holder in holders[:2]:  # two of three replicas lost it (a disk, a bug)
                assert isinstance(holder.storage, MemoryStore)
                del holder.storage.values[k]
            for reader in nodes[::3]:
                assert await reader.get_many([k], width=1) == {k: b"ok:kept"}
        finally:
            await stop_all(nodes)

    run(body)


def test_values_that_do_not_fit_one_reply_are_fetched_alone(net: Net) -> None:
    async def body() -> None:
        nodes = await swarm(net, 4)
        try:
            holder, reader = nodes[1], nodes[2]
            big = {key(f"big{i}"): b"ok:" + bytes([65 + i]) * 3000 for i in range(4)}
            for k, v in big.items():
                holder.storage.put(k, v, holder.node_id, 0)
            got = await reader._ask_values(Node(holder.node_id, *holder.address), list(big))
            assert got == [(True, v) for v in big.values()]
            # The holder's own reply held what fitted and marked the rest.
            reply = holder.proto.rpc_find_values(reader.address, list(big))
            assert isinstance(reply, list) and reply[:2] == list(big.values())[:2]
            assert reply[2:] == [False, False]
        finally:
            await stop_all(nodes)

    run(body)


def _naive_cover(holders: dict[bytes, list[Node]], width: int) -> list[tuple[bytes, list[bytes]]]:
    """The greedy cover written plainly: recount every candidate every step."""
    need = {k: min(width, len(h)) for k, h in holders.items()}
    cands: dict[bytes, list[bytes]] = {}
    for k, nodes in holders.items():
        for n in nodes:
            cands.setdefault(n.id, []).append(k)
    plan = []
    while cands:
        nid = max(cands, key=lambda i: sum(need[k] > 0 for k in cands[i]))
        useful = [k for k in cands[nid] if need[k] > 0]
        if not useful:
            break
        plan.append((nid, useful))
        for k in useful:
            need[k] -= 1
        del cands[nid]
    return plan


@pytest.mark.parametrize("seed", range(20))
def test_cover_matches_the_plain_greedy(seed: int) -> None:
    import random

    from dht.plan import cover

    rng = random.Random(seed)
    nodes = [Node(bytes([i]) * 20, "127.0.0.1", 9000 + i) for i in range(rng.randint(1, 12))]
    holders = {bytes([k]) * 32: rng.sample(nodes, rng.randint(1, min(3, len(nodes))))
               for k in range(rng.randint(1, 48))}
    for width in (1, 2, 3):
        got = [(n.id, ks) for n, ks in cover(holders, width)]
        assert got == _naive_cover(holders, width)
        asked: dict[bytes, int] = {}
        for _, ks in got:
            for k in ks:
                asked[k] = asked.get(k, 0) + 1
        assert asked == {k: min(width, len(h)) for k, h in holders.items()}
