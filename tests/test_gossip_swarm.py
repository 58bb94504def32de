"""Ten spore processes converge through gossip (real HTTP, real UDP, loopback).

DNA, peers and votes converge; a partition (gossip blocked between two
halves) with votes on both sides heals to identical votes everywhere (and
one fitness wherever no own vote weighs in); a
founder's DNA update reaches every spore; a spore of another swarm, a
replayed request and a forged request are each refused and counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from p2pnode.gossip import KIND_VOTE
from p2pnode.identity import Identity
from p2pnode.peerauth import sign_request
from tests.conftest import Daemon, make_daemon, pass_header, start_swarm, stop_all, wait_for

SPORES = 10
INTERVAL_S = 0.25
FACT = ("Which tool shows the kernel log?", "journalctl -k shows the kernel ring buffer.")


@pytest.fixture(scope="module")
def spores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    out: list[Daemon] = []
    for i in range(SPORES):
        d = make_daemon(tmp_path_factory.mktemp(f"g{i}"))
        d.env.update(SPORE_GOSSIP_INTERVAL=str(INTERVAL_S), SPORE_MAX_CONTACTS_PER_IP="64")
        out.append(d)
    start_swarm(out)
    yield out
    stop_all(out)


def _roots(spores: list[Daemon]) -> set[str]:
    return {d.json("GET", "/v1/gossip")["root"] for d in spores}


def test_peers_and_dna_converge(spores: list[Daemon]) -> None:
    wait_for(lambda: len(_roots(spores)) == 1, 60, "one gossip root everywhere")

    def listed(d: Daemon) -> set[str]:
        return {f"{m['host']}:{m['port']}" for m in d.json("GET", "/v1/peers")["gossip"]}

    # a card learnt by gossip becomes a member at the holder's next round start
    wait_for(lambda: all({o.dht for o in spores if o is not d} <= listed(d) for d in spores),
             30, "every spore lists every other")
    for d in spores:
        members = d.json("GET", "/v1/peers")["gossip"]
        assert {o.dht for o in spores if o is not d} <= {f"{m['host']}:{m['port']}"
                                                        for m in members}
        assert any(m["state"] == "alive" for m in members), members
    assert len({d.json("GET", "/v1/dna")["hash"] for d in spores}) == 1


def _vote(d: Daemon, up: bool) -> str:
    got = d.json("POST", "/v1/ask", {"question": FACT[0], "top": 1})
    assert got["answer"] == FACT[1], got
    d.json("POST", "/v1/rate", {"answer_id": got["answer_id"], "vote": "up" if up else "down"})
    return str(got["sources"][0]["id"])


def _fitness(spores: list[Daemon], memory: str) -> list[tuple[int, int, int]]:
    out = []
    for d in spores:
        v = d.json("GET", f"/v1/votes/{memory}")
        out.append((v["voters"], v["up"], v["down"]))
    return out


def test_votes_converge_through_a_partition(spores: list[Daemon]) -> None:
    spores[3].json("POST", "/v1/teach", {"text": FACT[1], "question": FACT[0]})
    wait_for(lambda: all(d.json("POST", "/v1/ask", {"question": FACT[0], "top": 1})["answer"]
                         == FACT[1] for d in spores), 60, "the fact answerable everywhere")
    memory = _vote(spores[1], True)
    wait_for(lambda: set(_fitness(spores, memory)) == {(1, 1, 0)}, 30, "the first vote")

    left, right = spores[:5], spores[5:]
    for side, other in ((left, right), (right, left)):
        for d in side:
            d.json("POST", "/v1/gossip/block", {"peers": [o.dht for o in other]})
    for d in left[1:4]:  # spores 1 (its second vote), 2 and 3
        _vote(d, True)
    for d in right[:3]:
        _vote(d, False)
    wait_for(lambda: set(_fitness(left, memory)) == {(3, 3, 0)}, 30, "votes on the left")
    wait_for(lambda: set(_fitness(right, memory)) == {(4, 1, 3)}, 30, "votes on the right")
    assert set(_fitness(left, memory)) != set(_fitness(right, memory))  # really partitioned

    healed = time.monotonic()
    for d in spores:
        d.json("POST", "/v1/gossip/block", {"peers": []})
    wait_for(lambda: set(_fitness(spores, memory)) == {(6, 3, 3)}, 30, "healed fitness")
    wait_for(lambda: len(_roots(spores)) == 1, 30, "one root after healing")
    assert time.monotonic() - healed < 30
    # The same votes weigh the same wherever trust (a pure function of the
    # same items) weighs them; a voter's own vote weighs 1 on its own spore,
    # so compare the spores that did not vote.
    bystanders = [spores[i] for i in (0, 4, 8, 9)]
    wait_for(lambda: len({d.json("GET", f"/v1/votes/{memory}")["fitness"]
                          for d in bystanders}) == 1, 30, "one fitness on the bystanders")


def test_a_restarted_spore_catches_up_on_what_it_missed(spores: list[Daemon]) -> None:
    down = spores[8]
    down.stop()
    try:
        memory = _vote(spores[6], True)  # spore 6 changes its mind: down → up
        live = spores[:8] + spores[9:]
        wait_for(lambda: set(_fitness(live, memory)) == {(6, 3, 2)}, 30, "the new vote")
        # Its own store keeps the 6 voters' items while it is down (read from the
        # file: once it runs, news-driven gossip may update spore 6's before any
        # request of ours could see the old one).
        assert _held_votes(down, memory) == 6
    finally:
        down.start("--peer", spores[0].dht)
    wait_for(lambda: _fitness([down], memory) == [(6, 3, 2)], 30, "the restarted spore")


def _held_votes(d: Daemon, memory: str) -> int:
    """Vote items on `memory` in a stopped spore's gossip store file."""
    prefix = KIND_VOTE + bytes.fromhex(memory)
    with contextlib.closing(sqlite3.connect(d.state_dir / "gossip.sqlite3")) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM items WHERE substr(key, 1, ?) = ?",
                              (len(prefix), prefix)).fetchone()
    return int(count)


def test_a_founders_dna_update_reaches_every_spore(spores: list[Daemon]) -> None:
    new = spores[0].json("POST", "/v1/dna", {"set": {"division_threshold": 42}})
    assert new["version"] == 2 and new["division_threshold"] == 42
    wait_for(lambda: all(d.json("GET", "/v1/dna")["version"] == 2 for d in spores), 30,
             "DNA version 2 everywhere")
    assert {d.json("GET", "/v1/dna")["division_threshold"] for d in spores} == {42}
    assert (spores[5].state_dir / "dna.bin").read_bytes() == (
        spores[0].state_dir / "dna.bin").read_bytes()
    code, body = spores[4].http("POST", "/v1/dna", {"set": {"division_threshold": 7}})
    assert code == 403 and "founder" in body["error"]


def _member_state(d: Daemon, of: Daemon) -> str | None:
    for m in d.json("GET", "/v1/peers")["gossip"]:
        if f"{m['host']}:{m['port']}" == of.dht:
            return str(m["state"])
    return None


def test_a_silent_peer_is_dropped_and_readmitted_when_it_returns(spores: list[Daemon]) -> None:
    quiet, watcher = spores[9], spores[0]
    assert quiet.proc is not None
    quiet.proc.send_signal(signal.SIGSTOP)  # alive to the kernel, silent to its peers
    try:
        wait_for(lambda: _member_state(watcher, quiet) == "dropped", 60, "the silent peer dropped")
        wait_for(lambda: any(_member_state(d, quiet) in ("suspect", "dropped")
                             for d in spores[1:9]), 60, "the others suspecting it too")
    finally:
        quiet.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: _member_state(watcher, quiet) == "alive", 30, "the peer re-admitted")


def _counters(d: Daemon) -> dict[str, int]:
    return d.json("GET", "/v1/gossip")["counters"]  # type: ignore[no-any-return]


def test_another_swarm_is_refused_on_both_sides(spores: list[Daemon],
                                                tmp_path_factory: pytest.TempPathFactory
                                                ) -> None:
    outsider = make_daemon(tmp_path_factory.mktemp("outsider"))
    outsider.env.update(SPORE_GOSSIP_INTERVAL=str(INTERVAL_S))
    outsider.start("--peer", spores[0].dht)
    try:
        wait_for(lambda: _counters(spores[0]).get("refused_another_swarm", 0) > 0, 30,
                 "the founder refusing the outsider's gossip")
        refused = outsider.json("GET", "/v1/peers")["gossip"]
        assert any(m["state"] == "refused" and m["reason"] == "another_swarm"
                   for m in refused), refused
        mine = spores[0].json("GET", "/v1/peers")
        assert any(r["reason"] == "another_swarm" for r in mine["refused"].values())
        assert outsider.dht not in {p["address"] for p in mine["peers"]}
        own = 2 + outsider.json("GET", "/v1/agents")["agents"]  # DNA, card, agents' cards
        assert outsider.json("GET", "/v1/gossip")["items"] == own  # nothing of the swarm
    finally:
        outsider.stop()


def _raw(d: Daemon, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://{d.dht}/peer/v1/sync", data=body, method="POST",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_replayed_and_forged_requests_are_refused_and_counted(spores: list[Daemon]) -> None:
    d = spores[2]
    swarm = bytes.fromhex(d.json("GET", "/v1/status")["swarm_id"])
    before = _counters(d)
    from crdt import sync

    body = sync.encode_digest(sync.summarize({}))
    tester = Identity.from_seed(b"tester")  # a member: its pass goes with it
    headers = sign_request(tester, swarm, "POST", "/peer/v1/sync", body,
                           int(time.time() * 1000), os.urandom(16)) | pass_header(spores[0], tester)
    assert _raw(d, headers, body)[0] == 200
    code, why = _raw(d, headers, body)
    assert code == 403 and why["reason"] == "replay"
    forged = dict(headers, **{"Spore-Nonce": os.urandom(16).hex()})
    code, why = _raw(d, forged, body)
    assert code == 403 and why["reason"] == "bad_signature"
    code, why = _raw(d, {}, body)
    assert code == 403 and why["reason"] == "unsigned"
    after = _counters(d)
    for reason in ("replay", "bad_signature", "unsigned"):
        assert after.get(f"refused_{reason}", 0) == before.get(f"refused_{reason}", 0) + 1
    assert d.proc is not None and d.proc.poll() is None


def test_news_spreads_without_waiting_for_the_interval(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """With a 60 s interval the first timed round is at least 45 s away; a
    vote still reaches the other spore because news starts a round at once
    (at most one per 12 s here: the cards of start-up may have taken it)."""
    pair = []
    for i in range(2):
        d = make_daemon(tmp_path_factory.mktemp(f"news{i}"))
        d.env.update(SPORE_GOSSIP_INTERVAL="60", SPORE_MAX_CONTACTS_PER_IP="64")
        pair.append(d)
    start_swarm(pair)
    try:
        started = time.monotonic()
        rater, other = pair
        rater.json("POST", "/v1/teach", {"text": FACT[1], "question": FACT[0]})
        memory = _vote(rater, True)
        wait_for(lambda: _fitness([other], memory) == [(1, 1, 0)], 30, "the vote, as news")
        assert time.monotonic() - started < 40  # before any timed round could have run
        assert other.json("GET", "/v1/status")["gossip"]["counters"]["rounds_for_news"] >= 1
    finally:
        stop_all(pair)
