"""Ten spore processes converge through gossip (real HTTP, real UDP, loopback).

DNA, peers and votes converge; a partition (gossip blocked between two
halves) with votes on both sides heals to identical fitness everywhere; a
founder's DNA update reaches every spore; a spore of another swarm, a
replayed request and a forged request are each refused and counted.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from p2pnode.identity import Identity
from p2pnode.peerauth import sign_request
from tests.conftest import Daemon, make_daemon, wait_for

SPORES = 10
INTERVAL_S = 0.25
FACT = ("Which tool shows the kernel log?", "journalctl -k shows the kernel ring buffer.")


def _j(d: Daemon, method: str, path: str, body: Any = None) -> Any:
    code, out = d.http(method, path, body)
    assert code in (200, 201), (path, out)
    return out


def _dht(d: Daemon) -> str:
    return f"127.0.0.1:{d.env['SPORE_DHT_PORT']}"


@pytest.fixture(scope="module")
def spores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    out: list[Daemon] = []
    for i in range(SPORES):
        d = make_daemon(tmp_path_factory.mktemp(f"g{i}"))
        d.env.update(SPORE_GOSSIP_INTERVAL=str(INTERVAL_S), SPORE_MAX_CONTACTS_PER_IP="64")
        out.append(d)
    out[0].start()
    dna = (out[0].state_dir / "dna.bin").read_bytes()
    for d in out[1:]:
        d.state_dir.mkdir(parents=True, exist_ok=True)
        (d.state_dir / "dna.bin").write_bytes(dna)
        d.start("--peer", _dht(out[0]), wait=False)
    for d in out[1:]:
        wait_for(d.healthy, 120, f"spore on {d.port}")
    yield out
    for d in out:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def _roots(spores: list[Daemon]) -> set[str]:
    return {_j(d, "GET", "/v1/gossip")["root"] for d in spores}


def test_peers_and_dna_converge(spores: list[Daemon]) -> None:
    wait_for(lambda: len(_roots(spores)) == 1, 60, "one gossip root everywhere")
    for d in spores:
        members = _j(d, "GET", "/v1/peers")["gossip"]
        alive = {f"{m['host']}:{m['port']}" for m in members if m["state"] == "alive"}
        others = {_dht(o) for o in spores if o is not d}
        assert others <= {f"{m['host']}:{m['port']}" for m in members}
        assert alive, members
    assert len({_j(d, "GET", "/v1/dna")["hash"] for d in spores}) == 1


def _vote(d: Daemon, up: bool) -> str:
    got = _j(d, "POST", "/v1/ask", {"question": FACT[0], "top": 1})
    assert got["answer"] == FACT[1], got
    _j(d, "POST", "/v1/rate", {"answer_id": got["answer_id"], "vote": "up" if up else "down"})
    return str(got["sources"][0]["id"])


def _fitness(spores: list[Daemon], memory: str) -> list[tuple[int, int, int]]:
    out = []
    for d in spores:
        v = _j(d, "GET", f"/v1/votes/{memory}")
        out.append((v["voters"], v["up"], v["down"]))
    return out


def test_votes_converge_through_a_partition(spores: list[Daemon]) -> None:
    _j(spores[3], "POST", "/v1/teach", {"text": FACT[1], "question": FACT[0]})
    wait_for(lambda: all(_j(d, "POST", "/v1/ask", {"question": FACT[0], "top": 1})["answer"]
                         == FACT[1] for d in spores), 60, "the fact answerable everywhere")
    memory = _vote(spores[1], True)
    wait_for(lambda: set(_fitness(spores, memory)) == {(1, 1, 0)}, 30, "the first vote")

    left, right = spores[:5], spores[5:]
    for side, other in ((left, right), (right, left)):
        for d in side:
            _j(d, "POST", "/v1/gossip/block", {"peers": [_dht(o) for o in other]})
    for d in left[1:4]:  # spores 1 (its second vote), 2 and 3
        _vote(d, True)
    for d in right[:3]:
        _vote(d, False)
    wait_for(lambda: set(_fitness(left, memory)) == {(3, 4, 0)}, 30, "votes on the left")
    wait_for(lambda: set(_fitness(right, memory)) == {(4, 1, 3)}, 30, "votes on the right")
    assert set(_fitness(left, memory)) != set(_fitness(right, memory))  # really partitioned

    healed = time.monotonic()
    for d in spores:
        _j(d, "POST", "/v1/gossip/block", {"peers": []})
    wait_for(lambda: set(_fitness(spores, memory)) == {(6, 4, 3)}, 30, "healed fitness")
    wait_for(lambda: len(_roots(spores)) == 1, 30, "one root after healing")
    assert time.monotonic() - healed < 30
    fits = {_j(d, "GET", f"/v1/votes/{memory}")["fitness"] for d in spores}
    assert len(fits) == 1


def test_a_restarted_spore_catches_up_on_what_it_missed(spores: list[Daemon]) -> None:
    down = spores[8]
    down.stop()
    try:
        memory = _vote(spores[6], True)  # spore 6 changes its mind: down → up
        live = spores[:8] + spores[9:]
        wait_for(lambda: set(_fitness(live, memory)) == {(6, 5, 3)}, 30, "the new vote")
    finally:
        down.start("--peer", _dht(spores[0]))
    assert _fitness([down], memory) == [(6, 4, 3)]  # its own store survived the restart
    wait_for(lambda: _fitness([down], memory) == [(6, 5, 3)], 30, "the restarted spore")


def test_a_founders_dna_update_reaches_every_spore(spores: list[Daemon]) -> None:
    new = _j(spores[0], "POST", "/v1/dna", {"set": {"division_threshold": 42}})
    assert new["version"] == 2 and new["division_threshold"] == 42
    wait_for(lambda: all(_j(d, "GET", "/v1/dna")["version"] == 2 for d in spores), 30,
             "DNA version 2 everywhere")
    assert {_j(d, "GET", "/v1/dna")["division_threshold"] for d in spores} == {42}
    assert (spores[5].state_dir / "dna.bin").read_bytes() == (
        spores[0].state_dir / "dna.bin").read_bytes()
    code, body = spores[4].http("POST", "/v1/dna", {"set": {"division_threshold": 7}})
    assert code == 403 and "founder" in body["error"]


def _member_state(d: Daemon, of: Daemon) -> str | None:
    for m in _j(d, "GET", "/v1/peers")["gossip"]:
        if f"{m['host']}:{m['port']}" == _dht(of):
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
    return _j(d, "GET", "/v1/gossip")["counters"]  # type: ignore[no-any-return]


def test_another_swarm_is_refused_on_both_sides(spores: list[Daemon],
                                                tmp_path_factory: pytest.TempPathFactory
                                                ) -> None:
    outsider = make_daemon(tmp_path_factory.mktemp("outsider"))
    outsider.env.update(SPORE_GOSSIP_INTERVAL=str(INTERVAL_S))
    outsider.start("--peer", _dht(spores[0]))
    try:
        wait_for(lambda: _counters(spores[0]).get("refused_another_swarm", 0) > 0, 30,
                 "the founder refusing the outsider's gossip")
        refused = _j(outsider, "GET", "/v1/peers")["gossip"]
        assert any(m["state"] == "refused" and m["reason"] == "another_swarm"
                   for m in refused), refused
        mine = _j(spores[0], "GET", "/v1/peers")
        assert any(r["reason"] == "another_swarm" for r in mine["refused"].values())
        assert _dht(outsider) not in {p["address"] for p in mine["peers"]}
        own = 2 + _j(outsider, "GET", "/v1/agents")["agents"]  # DNA, card, agents' cards
        assert _j(outsider, "GET", "/v1/gossip")["items"] == own  # nothing of the swarm
    finally:
        outsider.stop()


def _raw(d: Daemon, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://{_dht(d)}/peer/v1/sync", data=body, method="POST",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_replayed_and_forged_requests_are_refused_and_counted(spores: list[Daemon]) -> None:
    d = spores[2]
    swarm = bytes.fromhex(_j(d, "GET", "/v1/status")["swarm_id"])
    before = _counters(d)
    from crdt import sync

    body = sync.encode_digest(sync.summarize({}))
    headers = sign_request(Identity.from_seed(b"tester"), swarm, "POST", "/peer/v1/sync", body,
                           int(time.time() * 1000), os.urandom(16))
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
