"""Hostile peers at real PeerServices on loopback (issue 10): slow bodies that
held every serving place, a nonce flood that filled the replay cache, forged
peer cards that made tarpits gossip targets, and control characters that
forged log lines. Each is refused with a typed reason and counted, and the
honest traffic beside it still flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest

from crdt import sync
from dht import compact
from p2pnode.gossip import KIND_PEER, PROBE_EVERY, Member, Membership, vote_key
from p2pnode.identity import Identity
from p2pnode.peerauth import Refused, Verifier, sign_request
from p2pnode.peers import PATH, PeerService, ServeLimits, _source
from p2pnode.records import make_peer, make_vote
from p2pnode.service import setup_logging
from tests.conftest import free_udp_port
from tests.test_gossip import DNA, T0, store

SWARM = DNA.swarm_id
MALLORY = Identity.from_seed(b"mallory")
ATTACKER_SOURCE = "127.0.0.2"  # another loopback address: another source to the spore


async def _nothing(_: list[Any]) -> None:
    return None


async def _until(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"timed out after {deadline_s}s waiting for {what}"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _spores(n: int, *, mesh: bool = False, run: bool = False, **kw: Any
                  ) -> AsyncIterator[list[PeerService]]:
    """n started services on 127.0.0.1 (seeded with each other if `mesh`,
    gossiping if `run`), stopped on the way out."""
    ports = [free_udp_port() for _ in range(n)]
    svcs = [PeerService(identity=Identity.from_seed(b"honest%d" % i), swarm=SWARM, store=store(),
                        host="127.0.0.1", port=port, contacts=list, on_accepted=_nothing,
                        seeds=[("127.0.0.1", p) for p in ports if p != port] if mesh else [],
                        **{"interval_s": 60.0, **kw})
            for i, port in enumerate(ports)]
    loops: list[asyncio.Task[None]] = []
    try:
        for svc in svcs:
            await svc.start("127.0.0.1")
        if run:
            loops = [asyncio.ensure_future(svc.run()) for svc in svcs]
        yield svcs
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for svc in svcs:
            await svc.stop()


def _digest() -> bytes:
    return sync.encode_digest(sync.summarize({}))


# --- 8: slow bodies ----------------------------------------------------------------------

async def _slow_body(port: int, source: str, size: int = 500_000) -> int:
    """Announce a `size` body with well-formed signed headers and trickle it;
    the status the spore answers before it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    signed = sign_request(MALLORY, SWARM, "POST", PATH + "delta", bytes(size),
                          int(time.time() * 1000), os.urandom(16))
    head = "".join(f"{k}: {v}\r\n" for k, v in signed.items())
    writer.write(f"POST {PATH}delta HTTP/1.1\r\nHost: spore\r\nContent-Length: {size}\r\n"
                 f"{head}\r\n".encode() + bytes(100))

    async def trickle() -> None:
        with contextlib.suppress(OSError):
            while not writer.is_closing():
                await asyncio.sleep(0.1)  # the attacker's pace, not a wait on a condition
                writer.write(b"\0")
                await writer.drain()

    drip = asyncio.ensure_future(trickle())
    try:
        status = await asyncio.wait_for(reader.readline(), 10)
        await asyncio.wait_for(reader.read(), 10)  # EOF: the spore closed the connection
    finally:
        drip.cancel()
        writer.close()
    return int(status.split()[1])


def test_slow_bodies_hold_no_place_an_honest_request_needs() -> None:
    limits = ServeLimits(read_deadline_s=1.0)

    async def scenario() -> None:
        async with _spores(2, limits=limits) as (server, client):
            slow = [asyncio.ensure_future(_slow_body(server.port, ATTACKER_SOURCE))
                    for _ in range(10)]
            await _until(lambda: server._reading.get(ATTACKER_SOURCE) == limits.reads_per_source
                         and server.counters.get("refused_busy_source") == 6, 5,
                         "the attacker holding its places, refused the rest")
            for _ in range(3):  # honest requests are served at once, again and again
                started = time.monotonic()
                await client.request("127.0.0.1", server.port, "sync", _digest(), 2)
                assert time.monotonic() - started < 0.5
            statuses = await asyncio.gather(*slow)
            assert sorted(statuses) == [408] * 4 + [503] * 6
            assert server.counters["refused_slow_body"] == 4 and not server._reading
            assert server.counters["served_sync"] == 3
            # An announced body over the limit is refused before a byte of it is read.
            assert await _slow_body(server.port, ATTACKER_SOURCE, 10_000_000) == 413
            assert server.counters["refused_too_large"] == 1

    asyncio.run(scenario())


def test_slow_bodies_from_many_sources_fill_only_the_reading_places() -> None:
    limits = ServeLimits(reads=3, reads_per_source=2, read_deadline_s=0.5)

    async def scenario() -> None:
        async with _spores(2, limits=limits) as (server, client):
            slow = [asyncio.ensure_future(_slow_body(server.port, f"127.0.0.{2 + i % 2}"))
                    for i in range(4)]
            await _until(lambda: server.counters.get("refused_busy_reading") == 1, 5,
                         "the fourth slow body refused: all reading places taken")
            await client.request("127.0.0.1", server.port, "sync", _digest(), 2)  # whole body
            assert sorted(await asyncio.gather(*slow)) == [408, 408, 408, 503]

    asyncio.run(scenario())


def test_a_source_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert _source("203.0.113.7") == "203.0.113.7"
    assert _source("::ffff:203.0.113.7") == "203.0.113.7"
    assert _source("2001:db8:1:2::1") == _source("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert _source("2001:db8:1:3::1") != _source("2001:db8:1:2::1")


# --- 9: nonce floods ---------------------------------------------------------------------

def _signed(who: Identity, at: int) -> tuple[dict[str, str], bytes]:
    body = b"x"
    return sign_request(who, SWARM, "POST", "/p", body, at, os.urandom(16)), body


def test_a_flood_from_one_key_is_refused_to_that_key_only() -> None:
    verifier = Verifier(SWARM, max_nonces=64, max_nonces_per_key=16)
    honest = Identity.from_seed(b"honest")
    for i in range(40):  # dated +29 s, as in the attack
        headers, body = _signed(MALLORY, T0 + 29_000)
        if i < 16:
            verifier.check(headers, "POST", "/p", body, T0)
            continue
        with pytest.raises(Refused) as refused:
            verifier.precheck(headers, T0)  # refused before any body is read
        assert refused.value.reason == "busy_key"
    for i in range(10):
        headers, body = _signed(honest, T0 + i)
        assert verifier.check(headers, "POST", "/p", body, T0 + i) == honest.public_key


def test_many_keys_filling_the_cache_never_push_out_a_light_one() -> None:
    verifier = Verifier(SWARM, max_nonces=64, max_nonces_per_key=16)
    honest, sybils = Identity.from_seed(b"honest"), [Identity.from_seed(b"s%d" % i)
                                                      for i in range(8)]
    mine, _ = _signed(honest, T0)
    verifier.check(mine, "POST", "/p", b"x", T0)
    first = None
    for round_ in range(16):
        for s in sybils:  # 128 nonces for 64 places
            headers, body = _signed(s, T0 + round_)
            verifier.check(headers, "POST", "/p", body, T0 + 20)
            first = first or headers
    assert len(verifier._seen) == 64
    with pytest.raises(Refused) as replay:  # the honest nonce is still remembered
        verifier.check(mine, "POST", "/p", b"x", T0 + 20)
    assert replay.value.reason == "replay"
    assert first is not None  # an evicted nonce cannot be replayed: its key's floor rose
    with pytest.raises(Refused) as floor:
        verifier.check(first, "POST", "/p", b"x", T0 + 20)
    assert floor.value.reason == "busy_key"
    for i in range(10):  # the light key goes on being served
        headers, body = _signed(honest, T0 + 21 + i)
        verifier.check(headers, "POST", "/p", body, T0 + 21 + i)


def test_a_key_over_its_budget_gets_503_and_the_others_are_served() -> None:
    async def scenario() -> None:
        async with _spores(2) as (server, client):
            server.verifier = Verifier(SWARM, max_nonces_per_key=32)
            url = f"http://127.0.0.1:{server.port}{PATH}sync"
            body = _digest()
            got: list[tuple[int, str]] = []
            async with aiohttp.ClientSession() as session:
                for _ in range(40):
                    headers = sign_request(MALLORY, SWARM, "POST", PATH + "sync", body,
                                           int(time.time() * 1000) + 29_000, os.urandom(16))
                    async with session.post(url, data=body, headers=headers) as resp:
                        why = {} if resp.status == 200 else await resp.json()
                        got.append((resp.status, why.get("reason", "")))
            assert got == [(200, "")] * 32 + [(503, "busy_key")] * 8
            assert server.counters["refused_busy_key"] == 8
            await client.request("127.0.0.1", server.port, "sync", body, 2)
            # Busy is no verdict: the round fails and is retried, the peer is not 'refused'.
            server.verifier = Verifier(SWARM, max_nonces_per_key=1)
            member = client.members.know("127.0.0.1", server.port)
            assert not await client.round()
            assert member.state != "refused" and member.failures == 1

    asyncio.run(scenario())


# --- 10: forged peer cards ---------------------------------------------------------------

def _tarpits(n: int) -> list[socket.socket]:
    """Ports that accept (the kernel's backlog) and never answer."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        out.append(s)
    return out


def _cards(ports: list[int]) -> dict[bytes, bytes]:
    cards = {}
    for i, port in enumerate(ports):
        card = make_peer(Identity.from_seed(b"forged%d" % i), swarm=SWARM, host="127.0.0.1",
                         port=port, capacity=256,
                         seq=int(time.time() * 1000))
        cards[KIND_PEER + card.node_id] = card.wire
    return cards


async def _push(port: int, items: dict[bytes, bytes]) -> None:
    """A member's signed delta carrying `items` (at most one delta's worth)."""
    body = sync.pack([sync.encode_delta(items), []])
    headers = sign_request(MALLORY, SWARM, "POST", PATH + "delta", body,
                           int(time.time() * 1000), os.urandom(16))
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}{PATH}delta", data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()


def test_forged_cards_never_become_targets_and_votes_still_spread() -> None:
    tarpits = _tarpits(300)
    tarpit_addrs = {("127.0.0.1", s.getsockname()[1]) for s in tarpits}
    cards = _cards([port for _, port in tarpit_addrs])

    async def scenario() -> None:
        async with _spores(2, mesh=True, run=True, interval_s=0.1, timeout_s=0.5) as (a, b):
            pairs = list(cards.items())
            for at in range(0, len(pairs), sync.MAX_DELTA_ITEMS):  # 300: two deltas
                await _push(a.port, dict(pairs[at:at + sync.MAX_DELTA_ITEMS]))
            await _until(lambda: all(tarpit_addrs <= set(s.members.candidates) for s in (a, b)),
                         10, "the forged cards spreading (valid cards) and being learnt")
            await _until(lambda: all(s.counters.get("candidate_probes", 0) >= 3 for s in (a, b)),
                         10, "the tarpits being probed, now and then")
            voter = Identity.from_seed(b"voter")
            qvec = compact.pack(np.ones(DNA.fields["encoder"]["dim"], np.int8), 0.01)
            vote = make_vote(voter, memory_id=os.urandom(32), region=bytes(32), qvec=qvec,
                             up=1, down=0, seq=1)
            key = vote_key(vote.memory_id, voter.public_key, bytes(32))
            started = time.monotonic()
            a.store.offer({key: vote.wire})
            await _until(lambda: key in b.store.items, 5, "the vote reaching the other spore")
            assert time.monotonic() - started < 2.0
            for svc, other in ((a, b), (b, a)):
                assert not tarpit_addrs & set(svc.members.members)
                assert tarpit_addrs <= set(svc.members.candidates)
                assert [(m.host, m.port) for m in svc.members.live()] == [
                    ("127.0.0.1", other.port)]
                assert svc.counters.get("candidates_verified", 0) == 0
                probes = svc.counters.get("candidate_probes", 0)
                assert probes <= svc.members.rounds // PROBE_EVERY + 1
            states = {m["state"] for m in a.status()["members"]}
            assert states == {"alive", "candidate"}

    try:
        asyncio.run(scenario())
    finally:
        for s in tarpits:
            s.close()


def test_a_tarpit_holds_a_round_no_longer_than_its_deadline() -> None:
    (tarpit,) = _tarpits(1)

    async def scenario() -> None:
        async with _spores(1, timeout_s=0.3) as (svc,):
            svc.members.know(*tarpit.getsockname())
            started = time.monotonic()
            assert not await svc.round()
            assert time.monotonic() - started < 0.6
            assert svc.counters["failed_rounds"] == 1

    try:
        asyncio.run(scenario())
    finally:
        tarpit.close()


def test_candidates_are_capped_probed_rarely_and_promoted_once_verified() -> None:
    m = Membership(("127.0.0.1", 1), random.Random(3), max_members=4, max_candidates=50)
    honest = m.know("127.0.0.1", 2)
    m.ok(honest, 1.0)
    m.propose(("10.0.0.1", p) for p in range(1, 40))
    for c in list(m.candidates.values())[:30]:
        m.failed(c, "timeout")
    m.propose(("10.0.0.2", p) for p in range(1, 40))  # 78 proposed, 50 kept
    assert len(m.candidates) == 50
    assert sum(c.failures for c in m.candidates.values()) == 30 - 28  # failed ones left first
    picks = [m.pick() for _ in range(100)]
    probes = [p for p in picks if p is not None and p.candidate]
    assert 0 < len(probes) <= 100 // PROBE_EVERY
    assert all(p.failures == 0 for p in probes)  # the least failed first
    chosen = probes[0]
    m.ok(chosen, 2.0)
    assert not chosen.candidate and chosen in m.live() and m.find(chosen.host, chosen.port)
    assert (chosen.host, chosen.port) not in m.candidates


def test_members_are_capped_and_never_push_out_a_working_peer() -> None:
    m = Membership(("127.0.0.1", 1), random.Random(4), max_members=3)
    working = [m.know("127.0.0.1", p) for p in (2, 3)]
    for w in working:
        m.ok(w, 1.0)
    m.know("127.0.0.1", 4)  # never verified
    m.know("127.0.0.1", 5)  # takes the place of the one never verified
    assert set(m.members) == {("127.0.0.1", p) for p in (2, 3, 5)}
    m.ok(m.members[("127.0.0.1", 5)], 2.0)
    outsider = m.know("127.0.0.1", 6)  # all three work: it is not listed
    assert ("127.0.0.1", 6) not in m.members and isinstance(outsider, Member)


# --- 15: log injection -------------------------------------------------------------------

@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("journald", [False, True])
@pytest.mark.usefixtures("root_logging")
def test_a_peers_control_characters_never_forge_a_log_line(
        journald: bool, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", journald)
    forged = "10.0.0.1\n12:00:00 WARNING spore: founder key changed\r\x1b[2J\x85\u2028"
    logging.getLogger("spore.peers").warning("refused a peer request from %s", forged)
    try:
        raise ValueError(f"bad host {forged}")
    except ValueError:
        logging.getLogger("spore.peers").exception("while reading %s", forged)
    lines = capsys.readouterr().err.split("\n")[:-1]  # journald splits on \n only
    escaped = "10.0.0.1\\n12:00:00 WARNING spore: founder key changed\\r\\x1b[2J\\x85\\u2028"
    records = [line for line in lines if not line.startswith("  ")]
    assert len(records) == 2, lines  # a traceback's lines are indented: none is a record
    assert records[0].endswith(f"refused a peer request from {escaped}")
    assert records[1].endswith(f"while reading {escaped}")
    assert lines[-2:] == ["  ValueError: bad host 10.0.0.1",  # str(exc) keeps its line breaks
                          "  12:00:00 WARNING spore: founder key changed\\r\\x1b[2J\\x85\\u2028"]
