"""LAN discovery (p2pnode.discovery): the pure checks, the setting, and real
spores in network namespaces this test creates (a bridge in a namespace of
its own, one namespace per device, veth pairs; nothing in the host's own
network changes). Two spores of one swarm find each other by mDNS and
gossip a vote; a spore of another swarm is ignored; a hostile mDNS responder
(garbage, huge records, another swarm's tag, a flood of candidates) neither
crashes a spore nor fills anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from p2pnode.config import ConfigError, dht_listen, load_config
from p2pnode.discovery import (
    SERVICE_TYPE,
    Candidates,
    DiscoveryLimits,
    Ignored,
    advertised,
    on_link,
    swarm_tag,
)
from tests.conftest import SPORE, START_DEADLINE_S, Daemon, wait_for

T = TypeVar("T")
NET = ipaddress.IPv4Network("10.77.0.0/24")
TAG = swarm_tag(b"\x01" * 32)
NAME = "spore-abc." + SERVICE_TYPE


# -- the pure checks ----------------------------------------------------------------------
def test_tag_is_a_hash_of_the_swarm_id_only() -> None:
    swarm = bytes(range(32))
    tag = swarm_tag(swarm)
    assert tag == swarm_tag(swarm) and tag != swarm_tag(b"\x02" * 32)
    assert swarm.hex() not in tag and len(tag) == 32


@pytest.mark.parametrize(("name", "props", "addresses", "port", "reason"), [
    ("x._http._tcp.local.", {b"v": b"1", b"swarm": TAG.encode()}, ["10.77.0.2"], 7151,
     "bad_name"),
    ("a" * 300 + "." + SERVICE_TYPE, {b"v": b"1", b"swarm": TAG.encode()}, ["10.77.0.2"],
     7151, "bad_name"),
    (NAME, {b"swarm": TAG.encode()}, ["10.77.0.2"], 7151, "bad_version"),
    (NAME, {b"v": b"2", b"swarm": TAG.encode()}, ["10.77.0.2"], 7151, "bad_version"),
    (NAME, {b"v": b"1", b"swarm": swarm_tag(b"other").encode()}, ["10.77.0.2"], 7151,
     "other_swarm"),
    (NAME, {b"v": b"1", b"swarm": None}, ["10.77.0.2"], 7151, "other_swarm"),
    (NAME, {b"v": b"1", b"swarm": TAG.encode()}, ["10.77.0.2"], 0, "bad_port"),
    (NAME, {b"v": b"1", b"swarm": TAG.encode()}, ["10.77.0.2"], None, "bad_port"),
    (NAME, {b"v": b"1", b"swarm": TAG.encode()}, ["10.77.0.2"], 70000, "bad_port"),
    (NAME, {b"v": b"1", b"swarm": TAG.encode()},
     ["8.8.8.8", "127.0.0.1", "224.0.0.251", "0.0.0.0", "10.77.0.255", "10.77.0.0",
      "255.255.255.255", "not an address", "fe80::1"], 7151, "off_link"),
])
def test_an_advertisement_is_refused_with_its_reason(
        name: str, props: dict[bytes, bytes | None], addresses: list[str], port: int | None,
        reason: str) -> None:
    with pytest.raises(Ignored) as caught:
        advertised(name, props, addresses, port, tag=TAG, networks=[NET])
    assert caught.value.reason == reason


def test_an_advertisement_gives_few_on_link_candidates() -> None:
    props = {b"v": b"1", b"swarm": TAG.encode(), b"junk": b"\xff" * 5000}
    many = [f"10.77.0.{i}" for i in range(1, 200)]
    got = advertised(NAME, props, ["8.8.8.8", *many], 7151, tag=TAG, networks=[NET], limit=4)
    assert got == [(f"10.77.0.{i}", 7151) for i in range(1, 5)]
    assert not on_link(ipaddress.IPv4Address("10.77.1.1"), [NET])
    assert on_link(ipaddress.IPv4Address("10.77.1.1"), [NET, ipaddress.IPv4Network("10.77.1.0/24")])


def test_the_candidate_book_is_bounded_and_only_failures_make_room() -> None:
    limits = DiscoveryLimits(candidates=3, retry_s=10.0, max_retry_s=40.0, recheck_s=60.0)
    book = Candidates(limits)
    assert book.offer([("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)], 0.0) == (3, 0)
    assert book.offer([("10.0.0.4", 1), ("10.0.0.1", 1)], 0.0) == (0, 1)  # full, none failed
    assert sorted(book.due(0.0)) == [("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)]
    assert book.tried(("10.0.0.1", 1), True, 0.0)  # admitted: newly
    assert not book.tried(("10.0.0.1", 1), True, 0.0)
    book.tried(("10.0.0.2", 1), False, 0.0)
    book.tried(("10.0.0.3", 1), False, 0.0)
    book.tried(("10.0.0.3", 1), False, 10.0)
    assert book.due(9.9) == []
    assert book.due(10.0) == [("10.0.0.2", 1)]  # 10 s after one failure, 20 s after two
    assert book.due(30.0) == [("10.0.0.2", 1), ("10.0.0.3", 1)]
    # a newcomer takes the place of the most failed, never of the admitted one
    assert book.offer([("10.0.0.4", 1)], 30.0) == (1, 0)
    kept = {c["address"] for c in book.snapshot()}
    assert kept == {"10.0.0.1:1", "10.0.0.2:1", "10.0.0.4:1"}
    assert book.offer([("10.0.0.5", 1)], 30.0) == (1, 0)  # 10.0.0.2 had failed once
    assert book.offer([("10.0.0.6", 1)], 30.0) == (0, 1)
    for _ in range(10):
        book.tried(("10.0.0.4", 1), False, 30.0)
    assert min(c["failures"] for c in book.snapshot() if c["address"] == "10.0.0.4:1") == 10
    assert ("10.0.0.4", 1) not in book.due(30.0 + 39.9) and ("10.0.0.4", 1) in book.due(70.0)


# -- the setting --------------------------------------------------------------------------
def _env(tmp: Path, **more: str) -> dict[str, str]:
    return {"SPORE_STATE_DIR": str(tmp / "s"), "SPORE_CONFIG_DIR": str(tmp / "c"), **more}


def test_discover_opens_the_dht_port_and_says_why(tmp_path: Path) -> None:
    assert not load_config(_env(tmp_path)).discover
    for value in ("1", "true", "yes", "on"):
        cfg = load_config(_env(tmp_path, SPORE_DISCOVER=value))
        assert cfg.discover
        listen = dht_listen(cfg, joined=False, members=1)
        assert (listen.host, listen.reason, listen.loopback_only) == ("0.0.0.0", "discover",
                                                                      False)
    assert not load_config(_env(tmp_path, SPORE_DISCOVER="0")).discover
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.toml").write_text("[dht]\ndiscover = true\n")
    assert load_config(_env(tmp_path)).discover
    (tmp_path / "c" / "config.toml").write_text("[dht]\ndiscover = \"maybe\"\n")
    with pytest.raises(ConfigError, match="discover"):
        load_config(_env(tmp_path))
    (tmp_path / "c" / "config.toml").write_text("[dht]\ndiscover = false\n")
    assert load_config(_env(tmp_path, SPORE_DISCOVER="1")).discover  # the variable wins
    with pytest.raises(ConfigError, match="SPORE_DISCOVER"):
        load_config(_env(tmp_path, SPORE_DISCOVER="sometimes"))


def test_discover_refuses_a_loopback_dht_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="beyond loopback"):
        load_config(_env(tmp_path, SPORE_DISCOVER="1", SPORE_DHT_HOST="127.0.0.1"))
    cfg = load_config(_env(tmp_path, SPORE_DISCOVER="1", SPORE_DHT_HOST="10.77.0.1"))
    assert dht_listen(cfg, joined=False, members=1).reason == "configured"


def test_without_the_lan_extra_discovery_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from p2pnode.discovery import LanDiscovery
    from p2pnode.errors import SporeError

    monkeypatch.setitem(sys.modules, "zeroconf", None)  # as if not installed

    async def start() -> None:
        async def never(addr: tuple[str, int]) -> bool:
            raise AssertionError(addr)
        await LanDiscovery(swarm=b"s" * 32, host="0.0.0.0", port=7151,
                           try_candidate=never).start()
    with pytest.raises(SporeError, match=r"sporemind\[lan\]"):
        asyncio.run(start())


# -- spores in network namespaces ---------------------------------------------------------
CLONE_NEWNET = 0x40000000


class Netns:
    """A network namespace; `call` runs a function in a thread that entered it
    (sockets it opens live there), so the test reaches 127.0.0.1 inside."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(1, initializer=self._enter)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.name}")
        finally:
            os.close(fd)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Lan:
    """A bridge in a namespace of its own, and devices on it: 10.77.0.N/24."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    names: list[str] = field(default_factory=list)
    hosts: dict[str, Netns] = field(default_factory=dict)

    def bridge(self) -> None:
        br = self._add("br")
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", br, "link", "set", "br0", "up")

    def _add(self, what: str) -> str:
        name = f"spore-{self.tag}-{what}"
        _ip("netns", "add", name)
        self.names.append(name)
        return name

    def host(self, what: str, n: int) -> Netns:
        name, br = self._add(what), f"spore-{self.tag}-br"
        _ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{n}",
            "netns", br)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "add", f"10.77.0.{n}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "route", "add", "default", "dev", "eth0")  # multicast goes out there
        _ip("-n", br, "link", "set", f"p{n}", "master", "br0", "up")
        self.hosts[what] = Netns(name)
        return self.hosts[what]

    def delete(self) -> None:
        for ns in self.hosts.values():
            ns.close()
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _netns_permitted() -> str | None:
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux and iproute2's `ip`"
    probe = f"spore-probe-{uuid.uuid4().hex[:6]}"
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if res.returncode != 0:
        return f"`ip netns add` is not permitted here: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class NsDaemon(Daemon):
    """A spore process inside a namespace, on the namespace's own 127.0.0.1."""

    ns: Netns | None = None
    address: str = ""  # its LAN address

    def _exec(self) -> list[str]:
        assert self.ns is not None
        return ["ip", "netns", "exec", self.ns.name]

    def cli(self, *args: str, input: str | None = None, check: bool = False
            ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*self._exec(), SPORE, *args], env=self.env, capture_output=True,
                             text=True, input=input, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"spore {' '.join(args)} -> {res.returncode}\n{res.stderr}")
        return res

    def http(self, method: str, path: str, body: Any = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        assert self.ns is not None
        return self.ns.call(super().http, method, path, body, raw)

    def healthy(self) -> bool:
        assert self.ns is not None
        return self.ns.call(super().healthy)

    def start(self, *extra: str, wait: bool = True) -> subprocess.Popen[bytes]:
        self.log = self.state_dir.parent / f"daemon-{self.address}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*self._exec(), SPORE, "node", "run", *extra],
                                         env=self.env, stdout=log, stderr=log)
        if wait:
            self.wait_serving()
        return self.proc

    def wait_serving(self) -> None:
        assert self.proc is not None
        wait_for(lambda: self.healthy() or self.proc.poll() is not None,  # type: ignore[union-attr]
                 START_DEADLINE_S, f"the spore at {self.address} to serve /healthz")
        assert self.proc.poll() is None, self.log.read_text()


def _spore(tmp: Path, ns: Netns, address: str, **env: str) -> NsDaemon:
    state, conf = tmp / "state", tmp / "config"
    conf.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPORE_")}
    base.pop("NOTIFY_SOCKET", None)
    base.update(SPORE_STATE_DIR=str(state), SPORE_CONFIG_DIR=str(conf), SPORE_PORT="7150",
                SPORE_DISCOVER="1", SPORE_GOSSIP_INTERVAL="0.25", **env)
    return NsDaemon(state, conf, 7150, base, ns=ns, address=address)


def _found_open(d: NsDaemon, swarm: str) -> None:
    d.cli("init", "--swarm", swarm, "--open", "--puzzle-bits", "0", check=True)


@dataclass
class World:
    lan: Lan
    a: NsDaemon
    b: NsDaemon
    c: NsDaemon


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    pytest.importorskip("zeroconf", reason="LAN discovery needs the lan extra "
                                           "(pip install -e '.[lan]')")
    if (why := _netns_permitted()) is not None:
        pytest.skip(why)
    lan = Lan()
    spores: list[NsDaemon] = []
    try:
        lan.bridge()
        hosts = {w: lan.host(w, n) for w, n in (("a", 1), ("b", 2), ("c", 3), ("h", 9))}
        a, b, c = (_spore(tmp_path_factory.mktemp(w), hosts[w], f"10.77.0.{n}")
                   for w, n in (("a", 1), ("b", 2), ("c", 3)))
        spores = [a, b, c]
        _found_open(a, "lan-test")
        b.state_dir.mkdir(parents=True)
        (b.state_dir / "dna.bin").write_bytes((a.state_dir / "dna.bin").read_bytes())
        _found_open(c, "another-swarm")
        for d in spores:
            d.start(wait=False)
        for d in spores:
            d.wait_serving()
        yield World(lan, a, b, c)
    finally:
        for d in spores:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
                try:
                    d.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
                    d.proc.wait()
        lan.delete()


def _dht_peers(d: NsDaemon) -> set[str]:
    return {p["address"] for p in d.json("GET", "/v1/peers")["peers"]}


def _counters(d: NsDaemon) -> dict[str, int]:
    return dict(d.json("GET", "/v1/status")["dht"]["counters"])


def test_spores_of_one_swarm_find_each_other_and_gossip_a_vote(world: World) -> None:
    a, b = world.a, world.b
    status = a.json("GET", "/v1/status")["dht"]["listen"]
    assert status["reason"] == "discover" and status["host"] == "0.0.0.0"
    wait_for(lambda: "10.77.0.2:7151" in _dht_peers(a) and "10.77.0.1:7151" in _dht_peers(b),
             20, "a and b to admit each other by mDNS")
    fact = ("Which tool shows the kernel log?", "journalctl -k shows the kernel ring buffer.")
    a.json("POST", "/v1/teach", {"text": fact[1], "question": fact[0]})
    got = a.json("POST", "/v1/ask", {"question": fact[0], "top": 1})
    a.json("POST", "/v1/rate", {"answer_id": got["answer_id"], "vote": "up"})
    memory = got["sources"][0]["id"]

    def b_has_the_vote() -> bool:
        code, votes = b.http("GET", f"/v1/votes/{memory}")
        return code == 200 and votes["up"] == 1
    wait_for(b_has_the_vote, 20, "a's vote to reach b by gossip")
    advertised = status["discovery"]["advertised"]
    assert advertised == ["10.77.0.1:7151"], status["discovery"]


def test_a_spore_of_another_swarm_is_ignored(world: World) -> None:
    a, c = world.a, world.c
    wait_for(lambda: _counters(a).get("lan_ignored_other_swarm", 0) >= 1
             and _counters(c).get("lan_ignored_other_swarm", 0) >= 2, 20,
             "each swarm to hear and ignore the other's advertisement")
    assert "10.77.0.3:7151" not in _dht_peers(a)
    assert not _dht_peers(c)
    gossip = {f"{m['host']}:{m['port']}" for m in a.json("GET", "/v1/peers")["gossip"]}
    assert "10.77.0.3:7151" not in gossip
    listed = a.json("GET", "/v1/status")["dht"]["listen"]["discovery"]["candidates"]
    assert "10.77.0.3:7151" not in {c["address"] for c in listed}


# -- a hostile mDNS responder -------------------------------------------------------------
FLOOD = 36  # advertisements of our swarm's tag at addresses where nobody listens (> the cap)


def _txt(*items: bytes) -> bytes:
    return b"".join(bytes([len(i)]) + i for i in items)


def _hostile_packets(tag: str) -> list[bytes]:
    """What anyone on the LAN may send: mDNS answers for our service type."""
    import socket

    from zeroconf import DNSAddress, DNSOutgoing, DNSPointer, DNSService, DNSText
    from zeroconf.const import (
        _CLASS_IN,
        _CLASS_UNIQUE,
        _FLAGS_AA,
        _FLAGS_QR_RESPONSE,
        _TYPE_A,
        _TYPE_PTR,
        _TYPE_SRV,
        _TYPE_TXT,
    )

    def service(instance: str, txt: bytes, port: int, ips: list[str]) -> list[bytes]:
        name, server = f"{instance}.{SERVICE_TYPE}", f"{instance}.local."
        unique = _CLASS_IN | _CLASS_UNIQUE
        out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, 4500, name), 0)
        out.add_answer_at_time(DNSService(name, _TYPE_SRV, unique, 120, 0, 0, port, server), 0)
        out.add_answer_at_time(DNSText(name, _TYPE_TXT, unique, 4500, txt), 0)
        for ip in ips:
            out.add_answer_at_time(DNSAddress(server, _TYPE_A, unique, 120,
                                              socket.inet_aton(ip)), 0)
        return out.packets()

    ours, theirs = b"swarm=" + tag.encode(), b"swarm=" + swarm_tag(b"elsewhere").encode()
    packets: list[bytes] = []
    for i in range(FLOOD):
        packets += service(f"flood-{i}", _txt(b"v=1", ours), 7151, [f"10.77.0.{100 + i}"])
    packets += service("other", _txt(b"v=1", theirs, b"x" * 200), 7151, ["10.77.0.200"])
    packets += service("huge", _txt(b"v=1", theirs, *[bytes([65 + i % 26]) * 250
                                                      for i in range(28)]), 7151,
                       ["10.77.0.201"])
    packets += service("port0", _txt(b"v=1", ours), 0, ["10.77.0.202"])
    packets += service("offlink", _txt(b"v=1", ours), 7151,
                       ["8.8.8.8", "127.0.0.1", "224.0.0.1", "10.77.0.255", "0.0.0.0"])
    packets += service("v9", _txt(b"v=9", ours), 7151, ["10.77.0.203"])
    packets += service("garbage", os.urandom(200), 7151, ["10.77.0.204"])
    packets += service("\x1b[31mred\x07", _txt(b"v=1", ours), 7151, ["10.77.0.205"])
    many = [f"10.77.0.{i}" for i in range(10, 90)]  # one advertisement, many addresses
    packets += service("many", _txt(b"v=1", ours), 7151, many)
    whole = packets[0]
    packets += [os.urandom(n) for n in (1, 12, 13, 100, 1400, 9000)]
    packets += [whole[: len(whole) // 2], whole[:12] + b"\xff" * 64]
    return packets


def _send_hostile(packets: list[bytes]) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("0.0.0.0", 5353))  # mDNS answers come from port 5353
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.77.0.9"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        for packet in packets:
            with contextlib.suppress(OSError):  # the 9,000-byte one may be too long to send
                s.sendto(packet, ("224.0.0.251", 5353))


def test_a_hostile_responder_neither_crashes_nor_fills_anything(world: World) -> None:
    a, b = world.a, world.b
    wait_for(lambda: "10.77.0.2:7151" in _dht_peers(a), 20, "a and b joined")
    tag = a.json("GET", "/v1/status")["dht"]["listen"]["discovery"]["tag"]
    world.lan.hosts["h"].call(_send_hostile, _hostile_packets(tag))
    # (zeroconf itself finds an SRV record with port 0 incomplete: "unresolved")
    reasons = ("lan_unresolved", "lan_ignored_off_link", "lan_ignored_bad_version")

    def heard_all() -> bool:
        counters = _counters(a)
        return all(counters.get(r, 0) >= 1 for r in reasons) and counters.get(
            "lan_ignored_other_swarm", 0) >= 3  # c's, "other" and "huge"
    wait_for(heard_all, 25, "a to resolve and refuse every kind of hostile advertisement")
    status = a.json("GET", "/v1/status")
    found = status["dht"]["listen"]["discovery"]
    assert found["names_seen"] >= FLOOD
    listed = {c["address"] for c in found["candidates"]}
    assert len(listed) <= DiscoveryLimits().candidates
    assert any(addr.startswith("10.77.0.1") and addr != "10.77.0.1:7151" for addr in listed), \
        "the flood became candidates: the bound was tested"
    many = {f"10.77.0.{i}:7151" for i in range(10, 90)}
    assert len(listed & many) <= DiscoveryLimits().addresses_per_service
    counters = status["dht"]["counters"]
    tries = counters.get("lan_admitted", 0) + counters.get("lan_refused", 0)
    rate, burst = DiscoveryLimits().tries
    assert tries <= burst + rate * status["uptime_s"] + rate, counters
    assert counters.get("lan_errors", 0) == 0
    # nothing it said made a DHT contact or a gossip member of a stranger
    assert _dht_peers(a) == {"10.77.0.2:7151"}
    assert a.healthy() and b.healthy()
    assert "Traceback" not in a.log.read_text()
