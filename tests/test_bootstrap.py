"""Spores form one swarm whatever order they start in (issue 15, item 1).

A joiner started before its bootstrap peer answers (every spore at once at
boot, or the founder last) retries with backoff until it has DHT contacts,
says at WARNING level and in its status that it is alone, and joins again
when its table empties. First the loop itself over dht.fake (injected sleep
and clock, no real waits), then real daemon processes on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dht.fake import FakeNetwork
from p2pnode import dna as dna_mod
from p2pnode.identity import Identity
from p2pnode.swarm import JOIN_CHECK_S, Backoff, Swarm, SwarmSettings
from tests.conftest import Daemon, make_daemon, stop_all, wait_for

# The promise: started in any order, N spores form one swarm within this
# (counted from the moment the last of them serves its API).
FORM_DEADLINE_S = 30.0
SERVE_DEADLINE_S = 120.0  # a daemon's start, slow on a loaded machine (not the promise)
DIM = 16
FOUNDER, JOINER, OTHER = ("10.0.0.1", 7151), ("10.0.0.2", 7151), ("10.0.0.3", 7151)


# --- the loop, over an in-memory network --------------------------------------------


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(random.Random(3), first_s=0.5, cap_s=30.0, jitter=0.25)
    steps = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    delays = [backoff.next_s() for _ in steps]
    assert all(0.75 * s <= d <= s for d, s in zip(delays, steps, strict=True)), delays
    assert len(set(delays)) == len(delays)  # jittered: spores started together spread
    backoff.reset()
    assert backoff.next_s() <= 0.5


class _Stop(Exception):
    """Ends a keep_joined loop from its injected sleep."""


def _swarm(net: FakeNetwork, tmp: Path, addr: tuple[str, int], dna: dna_mod.Dna,
           identity: Identity, clock: Callable[[], float],
           peers: tuple[tuple[str, int], ...] = ()) -> Swarm:
    (tmp / addr[0]).mkdir()
    settings = SwarmSettings(host=addr[0], port=addr[1], peers=peers, rpc_timeout_s=0.05,
                             max_contacts_per_ip=64, rate_per_s=1e6)
    return Swarm(identity=identity, dna=dna, state_dir=tmp / addr[0], dim=DIM,
                 settings=settings, bind=net.bind, clock=clock, rng=random.Random(5))


def _founded() -> tuple[Identity, dna_mod.Dna]:
    founder = Identity.generate()
    return founder, dna_mod.found(founder, swarm="boot", encoder_name="toy",
                                  encoder_sha256="0" * 64, dim=DIM, created_ms=1)


def _run(test: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(), 30)

    asyncio.run(main())


def test_keep_joined_retries_with_backoff_warns_and_rejoins(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spore.swarm")
    now = [100.0]
    net = FakeNetwork()
    founder_id, dna = _founded()
    founder = _swarm(net, tmp_path, FOUNDER, dna, founder_id, lambda: now[0])
    joiner = _swarm(net, tmp_path, JOINER, dna, Identity.generate(), lambda: now[0],
                    peers=(FOUNDER,))
    steps: list[float] = []
    delays: dict[int, float] = {}  # attempt number -> the delay after it
    seen: dict[int, dict[str, Any]] = {}  # attempt number -> status just after it

    async def sleep(step: float) -> None:
        """Fake time: the founder comes up after the 4th attempt; stop once joined."""
        attempts = joiner.counters["bootstrap_attempts"]
        if attempts not in delays:
            delays[attempts], seen[attempts] = joiner.join.delay_s, joiner.status()
        steps.append(step)
        now[0] += step
        if attempts == 4 and founder.dht.protocol is None:
            await founder.start()
        if joiner.join.joined:
            raise _Stop

    async def scenario() -> None:
        await joiner.start()  # the founder is not there: the first attempt fails
        assert joiner.alone() and joiner.counters["bootstrap_attempts"] == 1
        with pytest.raises(_Stop):
            await joiner.keep_joined(sleep=sleep)
        assert [delays[n] <= 0.5 * 2 ** (n - 1) for n in (1, 2, 3, 4)] == [True] * 4, delays
        assert delays[1] < delays[2] < delays[3] < delays[4] and delays[5] == JOIN_CHECK_S
        assert max(steps) <= JOIN_CHECK_S  # waits in steps: a peer may reach us meanwhile
        assert seen[1]["alone"] and seen[1]["bootstrap"]["peers"] == ["10.0.0.1:7151"]
        assert seen[1]["bootstrap"]["next_retry_s"] == pytest.approx(delays[1], abs=0.06)
        assert seen[4]["bootstrap"]["attempts_since_joined"] == 4
        assert not joiner.alone() and joiner.status()["contacts"] == 1
        assert joiner.status()["bootstrap"]["next_retry_s"] is None
        # the table empties (its only peer evicted as dead), the peer is back: rejoin
        joiner.dht.proto.evict(FOUNDER)
        assert joiner.alone()
        assert await joiner.join_round() == JOIN_CHECK_S
        assert joiner.counters["rejoins"] == 1 and joiner.status()["contacts"] == 1
        await joiner.stop()
        await founder.stop()

    _run(scenario)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once when alone, not at every attempt
    assert warnings[0].startswith("DHT alone: no contacts although peers are configured "
                                  "(10.0.0.1:7151) or known by gossip (0 more); 1 bootstrap")
    joined = [r.getMessage() for r in caplog.records if r.getMessage().startswith("DHT joined")]
    assert joined[0] == "DHT joined: 1 contacts after 5 attempts", joined


def test_a_peer_that_reaches_us_first_ends_the_backoff_wait(tmp_path: Path) -> None:
    now = [0.0]
    net = FakeNetwork()
    founder_id, dna = _founded()
    founder = _swarm(net, tmp_path, FOUNDER, dna, founder_id, lambda: now[0])
    joiner = _swarm(net, tmp_path, JOINER, dna, Identity.generate(), lambda: now[0],
                    peers=(FOUNDER,))

    async def sleep(step: float) -> None:
        now[0] += step
        if founder.dht.protocol is None:  # the founder comes up and reaches the joiner
            await founder.start()
            assert await founder.dht.admit([JOINER]) == 1
        elif joiner.join.joined:
            raise _Stop

    async def scenario() -> None:
        await joiner.start()
        joiner.join.delay_s = 25.0  # alone for long: its backoff near the cap
        with pytest.raises(_Stop):
            await joiner.keep_joined(sleep=sleep)
        assert now[0] <= 2 * JOIN_CHECK_S  # the round came at the next step, not after 25 s
        assert joiner.counters["bootstrap_attempts"] == 1  # no retry was needed
        await joiner.stop()
        await founder.stop()

    _run(scenario)


def test_unresolvable_peer_is_counted_and_the_others_still_tried(tmp_path: Path) -> None:
    net = FakeNetwork()
    founder_id, dna = _founded()
    founder = _swarm(net, tmp_path, FOUNDER, dna, founder_id, time.monotonic)
    joiner = _swarm(net, tmp_path, JOINER, dna, Identity.generate(), time.monotonic,
                    peers=(("no-such-host.invalid", 7151), FOUNDER))

    async def scenario() -> None:
        await founder.start()
        await joiner.start()
        assert joiner.status()["contacts"] == 1
        assert joiner.counters["bootstrap_unresolved"] == 1
        assert list(joiner.status()["bootstrap"]["unresolved"]) == ["no-such-host.invalid:7151"]
        await joiner.stop()
        await founder.stop()

    _run(scenario)


def test_joined_spore_admits_the_gossip_peers_its_table_lacks(tmp_path: Path) -> None:
    """Two joiners that bootstrapped through the founder at the same moment
    know only the founder; gossip knows both: the next round admits."""
    net = FakeNetwork()
    founder_id, dna = _founded()
    spores = [_swarm(net, tmp_path, a, dna, i, time.monotonic)
              for a, i in ((FOUNDER, founder_id), (JOINER, Identity.generate()),
                           (OTHER, Identity.generate()))]

    async def scenario() -> None:
        for s in spores:
            await s.start()
        joiner, other = spores[1], spores[2]
        assert await joiner.dht.admit([FOUNDER]) == 1
        await joiner.join_round()  # joined; its lookup found nobody else yet
        assert await other.dht.admit([FOUNDER]) == 1  # a moment later, through the founder
        assert joiner.status()["contacts"] == 1
        await joiner.join_round([FOUNDER, OTHER])  # gossip knows both
        assert joiner.status()["contacts"] == 2 and joiner.counters["gossip_admitted"] == 1
        for s in spores:
            await s.stop()

    _run(scenario)


# --- real daemons --------------------------------------------------------------------


def _spores(tmp: Path, n: int, **env: str) -> list[Daemon]:
    """n spores of one open swarm, none started: the first founded it (`spore
    init --open`), the others hold its DNA."""
    spores = [make_daemon(tmp / f"spore{i}") for i in range(n)]
    for d in spores:
        d.env.update(SPORE_MAX_CONTACTS_PER_IP="64", **env)
    # Open, free identities: these spores start all at once, before any member
    # could hand out invitations (tests/test_members.py covers invite swarms).
    spores[0].cli("init", "--swarm", "boot", "--open", "--puzzle-bits", "0", check=True)
    dna = (spores[0].state_dir / "dna.bin").read_bytes()
    for d in spores[1:]:
        d.state_dir.mkdir(parents=True)
        (d.state_dir / "dna.bin").write_bytes(dna)
    return spores


def _dht(d: Daemon) -> dict[str, Any]:
    """Its status' "dht" part ({} while it does not serve yet)."""
    if d.proc is not None and d.proc.poll() is not None:
        raise AssertionError(f"the spore on {d.port} exited:\n{d.log.read_text()[-3000:]}")
    if not d.healthy():
        return {}
    return d.json("GET", "/v1/status")["dht"]  # type: ignore[no-any-return]


def _formed(spores: list[Daemon]) -> bool:
    return all(_dht(d).get("contacts", 0) >= len(spores) - 1 for d in spores)


def _found_remote(d: Daemon, question: str, memory_id: str) -> bool:
    got = d.json("POST", "/v1/ask", {"question": question, "top": 3})
    return any(s["id"] == memory_id and s.get("remote") for s in got["sources"])


def _taught_here_found_there(author: Daemon, asker: Daemon) -> None:
    question = "Which command shows the routing table?"
    taught = author.json("POST", "/v1/teach", {"text": "ip route shows the routing table.",
                                               "question": question})
    wait_for(lambda: _found_remote(asker, question, taught["id"]), FORM_DEADLINE_S,
             "the memory taught on one joiner found from another")


def _start_joiners(spores: list[Daemon]) -> None:
    for d in spores[1:]:
        d.start("--peer", spores[0].dht, wait=False)


def _form(spores: list[Daemon], what: str) -> None:
    """Wait until every spore serves, then until they form one swarm (the promise)."""
    for d in spores:
        wait_for(lambda d=d: bool(_dht(d)), SERVE_DEADLINE_S, f"the spore on {d.port} to serve")
    wait_for(lambda: _formed(spores), FORM_DEADLINE_S, what)


def test_all_started_at_once_form_one_swarm(tmp_path: Path) -> None:
    spores = _spores(tmp_path, 3)
    try:
        _start_joiners(spores)
        spores[0].start(wait=False)
        _form(spores, "3 spores started at once to form one swarm")
        _taught_here_found_there(spores[1], spores[2])
    finally:
        stop_all(spores)


def _warned_alone(d: Daemon) -> bool:
    return "WARNING spore.swarm: DHT alone: no contacts although peers" in d.log.read_text()


def test_founder_started_last_joiners_say_alone_then_form(tmp_path: Path) -> None:
    spores = _spores(tmp_path, 3)
    try:
        _start_joiners(spores)
        for d in spores[1:]:  # their first bootstrap failed: the founder is not there
            wait_for(lambda d=d: _dht(d).get("alone") is True, SERVE_DEADLINE_S,
                     f"{d.port} to serve and say alone")
            wait_for(lambda d=d: _warned_alone(d), 10, f"{d.port} to warn it is alone")
            boot = _dht(d)["bootstrap"]
            assert boot["peers"] == [spores[0].dht] and boot["attempts"] >= 1
            assert boot["last_attempt_answered"] == 0 and boot["next_retry_s"] is not None
            assert "ALONE: no DHT contact" in d.cli("status", check=True).stdout
        spores[0].start(wait=False)
        _form(spores, "the joiners to join the founder started last")
        assert not any(_dht(d)["alone"] for d in spores)
        _taught_here_found_there(spores[2], spores[1])
        for d in spores[1:]:  # the table filled by a peer's handshake is noticed by a step
            wait_for(lambda d=d: "INFO spore.swarm: DHT joined" in d.log.read_text(),
                     2 * JOIN_CHECK_S + 5, f"{d.port} to log that it joined")
    finally:
        stop_all(spores)


def test_joiner_rejoins_when_its_only_peer_comes_back(tmp_path: Path) -> None:
    # A short republish interval: the joiner's own puts are what find its peer dead.
    spores = _spores(tmp_path, 2, SPORE_REPUBLISH_S="2")
    founder, joiner = spores
    try:
        founder.start()
        _start_joiners(spores)
        _form(spores, "the joiner to join")
        joiner.json("POST", "/v1/teach", {"text": "nftables replaced iptables."})
        founder.stop()
        wait_for(lambda: _dht(joiner).get("alone") is True, SERVE_DEADLINE_S,
                 "the joiner's table to empty once its only peer is gone")
        founder.start(wait=False)
        _form(spores, "the joiner to join again")
        # by its own retry, or the founder's reaching it first (noticed within a step)
        wait_for(lambda: _dht(joiner)["counters"]["rejoins"] >= 1, 2 * JOIN_CHECK_S + 5,
                 "the joiner to count its rejoin")
    finally:
        stop_all(spores)
