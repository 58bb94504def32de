"""`spore doctor` (cli/doctor.py) against real daemons and real sockets: a
healthy spore passes; a key others can read, a port another process holds, a
daemon that does not run each fail with their fix; the reach-back check
(p2pnode.peers' `reach` route) succeeds on loopback, fails when nobody
listens at the port we claim, and is rate-limited per source.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.doctor import check_peer
from p2pnode.config import load_config
from tests.conftest import Daemon, free_port, free_udp_port, make_daemon, stop_all


def _doctor(d: Daemon, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    res = subprocess.run([*_spore(), "doctor", "--json", *args], env={**d.env, **env},
                         capture_output=True, text=True, timeout=120)
    assert res.stdout, res.stderr
    return res.returncode, json.loads(res.stdout)


def _spore() -> list[str]:
    from tests.conftest import SPORE

    return [SPORE]


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in report["checks"] if c["name"] == name]
    assert len(found) == 1, report
    return found[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon]]:
    """A peer and this spore, one open swarm (free identities), on loopback."""
    peer, me = (make_daemon(tmp_path_factory.mktemp(w)) for w in ("peer", "me"))
    peer.cli("init", "--swarm", "doctor-test", "--open", "--puzzle-bits", "0", check=True)
    me.state_dir.mkdir(parents=True, mode=0o700)
    (me.state_dir / "dna.bin").write_bytes((peer.state_dir / "dna.bin").read_bytes())
    peer.start()
    me.start("--peer", peer.dht)
    yield peer, me
    stop_all([peer, me])


# -- reach-back on loopback (these four share the peer's reach budget for 127.0.0.1: in order)
def test_a_healthy_daemon_passes(pair: tuple[Daemon, Daemon]) -> None:
    peer, me = pair
    code, report = _doctor(me, "--peer", peer.dht)
    assert code == 0 and report["ok"], report
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses == {"state directory": "ok", "node key": "ok", "API token": "ok",
                        "disk": "ok", "encoder": "ok", "daemon": "ok", "API port": "ok",
                        "DHT port": "warn",  # the tests' spores listen on 127.0.0.1 only
                        "reach back": "ok", "clock": "ok"}, report
    assert me.proc is not None and _check(report, "daemon")["data"]["pid"] == str(me.proc.pid)
    reach = _check(report, "reach back")
    assert reach["data"]["address"] == me.dht and reach["data"]["tcp"] is True
    assert abs(_check(report, "clock")["data"]["offset_s"]) < 5
    assert "loopback" in _check(report, "DHT port")["detail"]


def test_the_known_peer_is_asked_by_default(pair: tuple[Daemon, Daemon]) -> None:
    peer, me = pair
    code, report = _doctor(me)
    assert code == 0, report
    assert _check(report, "reach back")["data"]["peer"] == peer.dht
    human = subprocess.run([*_spore(), "doctor", "--peer", "nonsense"], env=me.env,
                           capture_output=True, text=True, timeout=60)
    assert human.returncode == 2 and "--peer" in human.stderr


def test_reach_fails_when_nobody_listens_at_the_claimed_port(
        pair: tuple[Daemon, Daemon]) -> None:
    peer, me = pair
    port = free_udp_port()
    code, report = _doctor(me, "--peer", peer.dht, SPORE_DHT_PORT=str(port))
    assert code == 1 and not report["ok"]
    reach = _check(report, "reach back")
    assert reach["status"] == "fail", reach
    assert f"udp 127.0.0.1:{port}" in reach["detail"]
    assert f"open UDP and TCP {port}" in reach["fix"] and "spore node run" in reach["fix"]
    assert reach["data"]["udp"] == "no_answer" and reach["data"]["tcp"] is False
    assert _check(report, "clock")["status"] == "ok"  # the peer's answer still had its clock
    dht = _check(report, "DHT port")  # the daemon runs with the port it started with
    assert dht["status"] == "warn" and f"says port {port}" in dht["detail"]
    assert "restart" in dht["fix"]


def test_a_daemon_whose_api_is_elsewhere_is_named(pair: tuple[Daemon, Daemon]) -> None:
    _, me = pair
    code, report = _doctor(me, SPORE_PORT=str(free_port()))
    assert code == 1 and me.proc is not None
    check = _check(report, "daemon")
    assert check["status"] == "fail" and f"pid {me.proc.pid}" in check["detail"]
    assert "SPORE_PORT" in check["fix"]


def test_reach_back_is_rate_limited_per_source(pair: tuple[Daemon, Daemon]) -> None:
    peer, me = pair
    cfg = load_config(me.env)
    host, port = peer.dht.rsplit(":", 1)
    outcomes = [check_peer(cfg, (host, int(port)))[0] for _ in range(5)]
    busy = [c for c in outcomes if c.status == "warn" and "busy" in c.detail]
    assert busy, [c.detail for c in outcomes]
    assert "try again" in busy[0].fix
    assert all(c.status in ("ok", "warn") for c in outcomes)
    served = peer.json("GET", "/v1/gossip")["counters"]
    assert served.get("served_reach", 0) >= 3 and served.get("refused_rate_limited", 0) >= 1


# -- what fails, with its fix -------------------------------------------------------------
@pytest.fixture
def stopped(daemon: Daemon) -> Daemon:
    """A spore with a state directory and no daemon running."""
    daemon.cli("init", check=True)
    return daemon


def test_a_daemon_not_running_fails_with_its_fix(stopped: Daemon) -> None:
    code, report = _doctor(stopped)
    assert code == 1
    check = _check(report, "daemon")
    assert check["status"] == "fail" and "no spore daemon runs" in check["detail"]
    assert check["fix"].startswith("spore node run")
    assert _check(report, "API port")["status"] == "ok"  # free: nothing else holds it
    assert _check(report, "reach back")["status"] == "skip"
    human = subprocess.run([*_spore(), "doctor"], env=stopped.env, capture_output=True,
                           text=True, timeout=60)
    assert human.returncode == 1
    assert "FAIL  daemon" in human.stdout and "fix: spore node run" in human.stdout


def test_a_key_others_can_read_fails_with_its_fix(stopped: Daemon) -> None:
    assert _check(_doctor(stopped)[1], "state directory")["status"] == "ok"
    stopped.state_dir.chmod(0o755)
    state = _check(_doctor(stopped)[1], "state directory")
    assert state["status"] == "warn" and state["fix"] == f"chmod 700 {stopped.state_dir}"
    key = stopped.state_dir / "node_identity.key"
    key.chmod(0o644)
    token = stopped.state_dir / "api.token"
    token.write_text("x")
    token.chmod(0o640)
    code, report = _doctor(stopped)
    assert code == 1
    for name, path, mode in (("node key", key, "644"), ("API token", token, "640")):
        check = _check(report, name)
        assert check["status"] == "fail" and f"mode {mode}" in check["detail"], check
        assert check["fix"] == f"chmod 600 {path}"
    key.chmod(0o600)
    assert _check(_doctor(stopped)[1], "node key")["status"] == "ok"


def test_ports_held_by_another_process_fail_with_their_fix(stopped: Daemon) -> None:
    dht_port = int(stopped.env["SPORE_DHT_PORT"])
    with socket.socket() as api, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dht:
        api.bind(("127.0.0.1", stopped.port))
        api.listen()
        dht.bind(("127.0.0.1", dht_port))
        code, report = _doctor(stopped)
    assert code == 1
    api_check, dht_check = _check(report, "API port"), _check(report, "DHT port")
    me = f"pid {os.getpid()}"
    assert api_check["status"] == "fail" and "in use by another process" in api_check["detail"]
    assert me in api_check["detail"], api_check  # /proc names the holder: this test
    assert "SPORE_PORT" in api_check["fix"]
    assert dht_check["status"] == "fail" and f"udp 127.0.0.1:{dht_port}" in dht_check["detail"]
    assert me in dht_check["detail"] and "SPORE_DHT_PORT" in dht_check["fix"]


def test_a_missing_state_directory_fails(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    code, report = _doctor(d)
    assert code == 1
    check = _check(report, "state directory")
    assert check["status"] == "fail" and "spore init" in check["fix"]


# -- the reach-back wire (p2pnode.peers): a port, nothing else ----------------------------
@pytest.mark.parametrize("body", [
    [7151, "8.8.8.8"],  # no address can be named: the request's source is the only one
    [0], [65536], [-1], ["7151"], [True], [], {"port": 7151}, b"\x00" * 17,
])
def test_a_reach_request_names_only_a_port(body: Any) -> None:
    from crdt import wire
    from p2pnode.peers import decode_reach_request

    raw = body if isinstance(body, bytes) else wire.pack(body)
    with pytest.raises(wire.DecodeError):
        decode_reach_request(raw)
    assert decode_reach_request(wire.pack([7151])) == 7151


@pytest.mark.parametrize("change", [
    {"udp": "maybe"}, {"tcp": 1}, {"port": 0}, {"now_ms": -1}, {"now_ms": 1 << 63},
    {"address": "x" * 100},
])
def test_a_reach_reply_is_checked(change: dict[str, Any]) -> None:
    from crdt import wire
    from p2pnode.peers import decode_reach_reply

    good = {"address": "127.0.0.1", "port": 7151, "udp": "ok", "tcp": True, "now_ms": 1}
    assert decode_reach_reply(wire.pack(good)) == good
    with pytest.raises(wire.DecodeError):
        decode_reach_reply(wire.pack({**good, **change}))
    with pytest.raises(wire.DecodeError):
        decode_reach_reply(wire.pack({k: v for k, v in good.items() if k != "udp"}))
