"""What one sender may make a spore do (issue 10's flood figure, scripts/bench/
hostile.py): signed requests, pushed gossip items and the costly agent routes
are budgeted per source address (and items per key too), whatever keys sign;
past a budget a request is answered 429 `rate_limited`, counted, and nothing
of it is verified or stored. Peers' jobs for the compute thread are dropped,
not queued, past a few. Honest gossip stays far below every budget.

In process: real PeerServices on loopback, the attacker on 127.0.0.2/3.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest

from crdt import sync
from dht.guard import TokenBuckets
from p2pnode.agentnet import COMPUTE_QUEUED
from p2pnode.identity import Identity
from p2pnode.peerauth import sign_request
from p2pnode.peers import PATH, ServeLimits
from tests.test_agents_hostile import f16, make_net, pack, unit
from tests.test_gossip import vote
from tests.test_peers_hostile import SWARM, _digest, _spores, _until

SOURCES = ("127.0.0.2", "127.0.0.3")


def fresh() -> Identity:
    return Identity.from_seed(os.urandom(32))


@contextlib.asynccontextmanager
async def _from(source: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            local_addr=(source, 0))) as session:
        yield session


async def _post(session: aiohttp.ClientSession, port: int, route: str, body: bytes,
                signer: Identity | None = None) -> tuple[int, str]:
    """A signed request (by a fresh key unless told): (status, refusal reason)."""
    headers = sign_request(signer or fresh(), SWARM, "POST", PATH + route, body,
                           int(time.time() * 1000), os.urandom(16))
    async with session.post(f"http://127.0.0.1:{port}{PATH}{route}", data=body,
                            headers=headers) as resp:
        why = {} if resp.status == 200 else await resp.json()
        return resp.status, str(why.get("reason", ""))


def _delta(items: dict[bytes, bytes]) -> bytes:
    return sync.pack([sync.encode_delta(items), []])


def _votes(n: int) -> dict[bytes, bytes]:
    """n votes of fresh voters, as the flood sends them."""
    memory = os.urandom(32)
    return dict(vote(fresh(), memory, 1) for _ in range(n))


def test_a_bucket_takes_a_cost_whole_or_not_at_all() -> None:
    now = [0.0]
    buckets = TokenBuckets(10.0, 100.0, 4, lambda: now[0])
    assert buckets.take("a", 60)
    assert not buckets.take("a", 60)  # 40 left: nothing taken
    assert buckets.take("a", 40)
    now[0] = 2.0  # 20 more
    assert not buckets.take("a", 21) and buckets.take("a", 20)
    assert buckets.take("b", 100)  # each source its own


def test_an_items_burst_must_hold_a_full_delta() -> None:
    with pytest.raises(ValueError, match="full deltas"):
        ServeLimits(items=(64.0, sync.MAX_DELTA_ITEMS - 1))


def test_a_source_over_its_request_budget_gets_429_whatever_keys_sign() -> None:
    limits = ServeLimits(requests=(0.5, 6.0))

    async def scenario() -> None:
        async with _spores(2, limits=limits) as (server, client), _from(SOURCES[0]) as flood:
            got = [await _post(flood, server.port, "sync", _digest()) for _ in range(10)]
            assert got == [(200, "")] * 6 + [(429, "rate_limited")] * 4
            assert server.counters["refused_rate_limited"] == 4
            assert server.counters["served_sync"] == 6
            # Another address is another budget: an honest peer is served at once.
            await client.request("127.0.0.1", server.port, "sync", _digest(), 2)
            async with _from(SOURCES[1]) as other:
                assert await _post(other, server.port, "sync", _digest()) == (200, "")

    asyncio.run(scenario())


def test_pushed_items_are_budgeted_by_source_and_by_key_before_any_is_checked() -> None:
    limits = ServeLimits(items=(0.5, 300.0))
    first, second, third = _votes(200), _votes(150), _votes(150)

    async def scenario() -> None:
        async with _spores(1, limits=limits) as (server,):
            held, taken = len(server.store.items), server.store.counters["accepted"]
            signer = fresh()
            async with _from(SOURCES[0]) as a, _from(SOURCES[1]) as b:
                assert await _post(a, server.port, "delta", _delta(first), signer) == (200, "")
                # 100 tokens left at this address: 150 more are refused whole,
                # from a fresh key too, before a signature of theirs is checked.
                assert await _post(a, server.port, "delta", _delta(second)) == (
                    429, "rate_limited")
                # The same key from another address: its own budget is spent too.
                assert await _post(b, server.port, "delta", _delta(second), signer) == (
                    429, "rate_limited")
                assert len(server.store.items) == held + 200
                assert server.store.counters["accepted"] == taken + 200
                # Another address, another key: taken.
                assert await _post(b, server.port, "delta", _delta(third)) == (200, "")
            assert len(server.store.items) == held + 350
            assert server.counters["refused_rate_limited"] == 2
            assert server.counters["items_pulled"] == 350

    asyncio.run(scenario())


def test_a_costly_route_has_its_own_budget_per_source() -> None:
    limits = ServeLimits(routes={"work": (0.5, 3.0)})

    async def scenario() -> None:
        async with _spores(1, limits=limits) as (server,), _from(SOURCES[0]) as flood:
            served: Counter[str] = Counter()

            async def work(sender: bytes, body: bytes) -> bytes:
                served["work"] += 1
                return b""

            server.routes["work"] = work
            got = [await _post(flood, server.port, "work", b"x") for _ in range(5)]
            assert got == [(200, "")] * 3 + [(429, "rate_limited")] * 2
            assert served["work"] == 3
            # Its other requests are within their own budget.
            assert await _post(flood, server.port, "sync", _digest()) == (200, "")

    asyncio.run(scenario())


def test_peers_scorings_wait_behind_a_few_at_most_then_are_dropped() -> None:
    gate = asyncio.Event()

    async def busy(fn: Any, *args: Any) -> Any:  # the compute thread, held up
        await gate.wait()
        return fn(*args)

    async def scenario() -> None:
        net = make_net(Identity.from_seed(b"intake: scorer"))
        await net.start(None)
        net.compute = busy
        try:
            q, cands = unit(), unit(8)
            room = COMPUTE_QUEUED["score"]
            calls = [asyncio.ensure_future(net.routes["score"](
                fresh().public_key, pack([os.urandom(16), f16(q[0]), f16(cands)])))
                for _ in range(room + 3)]
            await _until(lambda: sum(c.done() for c in calls) == 3, 5, "3 dropped at once")
            assert {getattr(c.exception(), "reason", "") for c in calls if c.done()} == {
                "busy_compute"}
            gate.set()
            done = await asyncio.gather(*calls, return_exceptions=True)
            assert sum(isinstance(d, bytes) for d in done) == room
            assert net.counters["score_refused_busy_compute"] == 3
            assert net.counters["scored_for_peers"] == room
            # Not queued: the next one is served at once.
            await net.routes["score"](fresh().public_key,
                                      pack([os.urandom(16), f16(q[0]), f16(cands)]))
        finally:
            await net.stop()

    asyncio.run(scenario())


def test_honest_gossip_with_news_stays_far_below_every_budget() -> None:
    """Three spores gossiping every 50 ms (a tenth of learning.py's interval),
    a vote taught every 20 ms on each: everything converges, nothing refused."""

    async def scenario() -> None:
        async with _spores(3, mesh=True, run=True, interval_s=0.05) as svcs:
            keys: list[bytes] = []
            for _ in range(50):
                for svc in svcs:
                    key, item = vote(fresh(), os.urandom(32), 1)
                    svc.store.offer({key: item})
                    keys.append(key)
                await asyncio.sleep(0.02)  # the voters' pace, not a wait on a condition
            await _until(lambda: all(set(keys) <= s.store.items.keys() for s in svcs), 20,
                         "every vote everywhere")
            for svc in svcs:
                assert not {k: n for k, n in svc.counters.items() if k.startswith("refused")}
                assert svc.counters.get("items_pulled", 0) >= 100

    asyncio.run(scenario())


def test_the_budgets_pass_the_honest_peaks_they_were_measured_on() -> None:
    """scripts/bench/learning.py (7 spores behind one address, rounds every
    0.5 s): 39 requests and 107 items in one second, 22 and 40 a second for
    ten seconds. Replayed against the default budgets: never refused."""
    limits = ServeLimits()
    now = [0.0]
    requests = TokenBuckets(*limits.requests, 4, lambda: now[0])
    items = TokenBuckets(*limits.items, 4, lambda: now[0])
    rng = np.random.default_rng(5)
    for second in range(120):
        peak = second % 10 == 0
        for i in range(39 if peak else 18):
            now[0] = second + i / 40
            assert requests.take("127.0.0.1")
        for i in range(8 if peak else 3):
            now[0] = second + i / 10
            assert items.take("127.0.0.1", 13 if peak else int(rng.integers(10, 16)))
