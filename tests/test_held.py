"""What held in issue 10 and must keep holding, on real daemon processes: an
acknowledged memory survives kill -9 in the middle of `spore ingest` and of a
burst of teaches; a damaged gossip, agents or DHT store, or swarm DNA, stops the
daemon with a word that names the file, and the file is left as it was; signed
peer requests are taken within ±30 s of our clock, no further; oversized bodies
get 413 on both faces; connections that send their headers slowly hold nothing
an honest request needs. (Score-request caps and DHT quotas are held by
test_agents_hostile and test_dht_values / test_dht_wipe.)
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from crdt import sync
from p2pnode.api import MAX_BODY as API_MAX_BODY
from p2pnode.gossip import MAX_BODY as PEER_MAX_BODY
from p2pnode.identity import Identity
from p2pnode.peerauth import sign_request
from tests.conftest import (
    SPORE,
    Daemon,
    make_daemon,
    pass_header,
    start_swarm,
    stop_all,
    wait_for,
)

# --- kill -9 during ingest and a burst of teaches ---------------------------------------------


class _AckProxy(ThreadingHTTPServer):
    """Stands between `spore ingest` and the daemon and keeps the ids of every
    batch the daemon acknowledged (the CLI prints no ids until it is done)."""

    daemon_threads = True

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.target = target
        self.acked: list[str] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Relay(BaseHTTPRequestHandler):
    server: _AckProxy

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k: v for k in ("Content-Type", "Authorization")
                   if (v := self.headers.get(k)) is not None}
        req = urllib.request.Request(self.server.target + self.path, data=body, method="POST",
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, reply = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, reply = exc.code, exc.read()
        except (OSError, http.client.HTTPException):  # the daemon died mid-request
            self.send_error(502)
            return
        if status in (200, 201) and self.path == "/v1/ingest":
            with self.server.lock:
                self.server.acked += json.loads(reply)["ids"]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _teach_burst(d: Daemon, who: int, acked: list[str], stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        try:
            code, body = d.http("POST", "/v1/teach",
                                {"text": f"writer {who} taught fact {i} of the burst"})
        except (OSError, http.client.HTTPException):
            return  # the daemon died mid-request: that one was never acknowledged
        if code in (200, 201):
            acked.append(body["id"])
        i += 1


def _folder(root: Path, files: int) -> Path:
    folder = root / "notes"
    folder.mkdir()
    for i in range(files):
        (folder / f"note-{i:04d}.txt").write_text(
            f"Note {i}. The spore on shelf {i % 17} keeps what it was taught on the device "
            f"that learnt it; fact {i * 7919} is written down here and nowhere else.\n")
    return folder


def test_kill_9_during_ingest_and_a_teach_burst_loses_nothing_acknowledged(
        daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    proxy = _AckProxy(daemon.url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    taught: list[str] = []
    stop = threading.Event()
    writers = [threading.Thread(target=_teach_burst, args=(daemon, w, taught, stop))
               for w in range(4)]
    ingest = subprocess.Popen(
        [SPORE, "ingest", str(_folder(tmp_path, 400)), "--batch", "8", "--json"],
        env={**daemon.env, "SPORE_PORT": str(proxy.port)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for w in writers:
            w.start()
        wait_for(lambda: len(proxy.acked) >= 48 and len(taught) >= 30, 120,
                 "ingest batches and teaches acknowledged")
        assert ingest.poll() is None, "the ingest finished before the kill: make it longer"
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)  # the ingest and all four writers mid-flight
        daemon.proc.wait()
        daemon.proc = None
    finally:
        stop.set()
        for w in writers:
            w.join()
        ingest.wait(timeout=120)
        proxy.shutdown()
        proxy.server_close()
    assert ingest.returncode != 0  # cut off: it never claimed to have finished
    with proxy.lock:
        acked = set(proxy.acked) | set(taught)
    daemon.start()
    lost = [mid for mid in sorted(acked) if daemon.http("GET", f"/v1/memories/{mid}")[0] != 200]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged memories lost: {lost[:5]}"
    status = daemon.json("GET", "/v1/status")
    assert status["memories"] >= len(acked) and status["indexed"] == status["memories"]
    assert daemon.stop() == 0


# --- damaged stores and DNA: refused, named, untouched ----------------------------------------

STORES = {"gossip.sqlite3": "items", "agents.sqlite3": "agents", "dht.sqlite3": "dht_values"}
FOREIGN = b"%PDF-1.7\n" + bytes(range(256)) * 64  # a file that is not SQLite at all
PAGE = 4096


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _open_ro(db: Path) -> contextlib.closing[sqlite3.Connection]:
    """Read a stopped spore's store without leaving -wal/-shm files beside it."""
    return contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True))


def _rows(db: Path, table: str) -> int:
    with _open_ro(db) as con:
        return int(con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _pages(db: Path, name: str, kinds: tuple[str, ...]) -> list[int]:
    with _open_ro(db) as con:
        return [int(n) for (n, kind) in con.execute(
            "SELECT pageno, pagetype FROM dbstat WHERE name=?", (name,)) if kind in kinds]


def _noise(path: Path, offset: int, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(random.Random(path.name).randbytes(size))


def _overwrite_middle(path: Path) -> None:
    """Noise over the middle of a real file, as a bad sector would leave it: the
    page of the store's rows nearest the middle, or 16 bytes of the DNA's body."""
    if path.name not in STORES:
        _noise(path, path.stat().st_size // 2, 16)
        return
    middle = path.stat().st_size // PAGE // 2
    page = min(_pages(path, STORES[path.name], ("leaf", "overflow")),
               key=lambda n: abs(n - middle))
    _noise(path, (page - 1) * PAGE, PAGE)


def _foreign(path: Path) -> None:
    path.write_bytes(FOREIGN)


def _index_page(path: Path) -> None:
    """Noise over the DHT store's index by refresh time, which no start reads."""
    [page] = _pages(path, "dht_values_refreshed", ("leaf",))
    _noise(path, (page - 1) * PAGE, PAGE)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "middle": _overwrite_middle, "foreign": _foreign, "index": _index_page}
CASES = [(name, how) for name in (*STORES, "dna.bin") for how in ("middle", "foreign")]
DHT_INDEX = ("dht.sqlite3", "index")
EXIT_DEADLINE_S = 20.0  # a damaged spore stops within seconds: encoder, stores, DHT


@dataclass
class Refusal:
    code: int | None  # None: still running after EXIT_DEADLINE_S
    log: str
    path: Path  # the damaged file
    before: dict[str, str]  # sha256 of each file of the state directory, by name
    after: dict[str, str]


def _state_files(state: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in state.iterdir() if p.is_file() and p.name != "spore.lock"
            and not p.name.endswith(("-wal", "-shm"))}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory of a spore that ran in a swarm of two, holds peers'
    DHT values, gossip items and agents, and stopped cleanly."""
    root = tmp_path_factory.mktemp("ran")
    spores = [make_daemon(root / "a"), make_daemon(root / "b")]
    try:
        start_swarm(spores)
        for i in range(12):
            spores[0].json("POST", "/v1/teach", {"text": f"fact {i}: spores keep what they learn"})
        wait_for(lambda: spores[1].json("GET", "/v1/status")["dht"]["store"]["count"] > 0, 60,
                 "the second spore to hold DHT values")
    finally:
        stop_all(spores)
    state = spores[1].state_dir
    for name, table in STORES.items():
        assert _rows(state / name, table) > 0, f"{name} holds no rows to damage"
    return state


@pytest.fixture(scope="module")
def refusals(ran: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[tuple[str, str], Refusal]:
    """Each damage on its own copy of `ran`, all started at once."""
    started: dict[tuple[str, str], tuple[Daemon, dict[str, str]]] = {}
    for name, how in [*CASES, DHT_INDEX]:
        d = make_daemon(tmp_path_factory.mktemp(f"{name}-{how}"))
        shutil.copytree(ran, d.state_dir)
        (d.state_dir / "spore.lock").unlink(missing_ok=True)
        DAMAGE[how](d.state_dir / name)
        started[(name, how)] = d, _state_files(d.state_dir)
        d.start(wait=False)
    end = time.monotonic() + EXIT_DEADLINE_S
    out = {}
    for case, (d, before) in started.items():
        assert d.proc is not None
        try:
            code: int | None = d.proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        if d.proc.poll() is None:
            d.stop(signal.SIGKILL)
        out[case] = Refusal(code, d.log.read_text(), d.state_dir / case[0], before,
                            _state_files(d.state_dir))
    return out


@pytest.mark.parametrize(("name", "how"), CASES)
def test_a_damaged_store_or_dna_stops_the_daemon_naming_it(
        refusals: dict[tuple[str, str], Refusal], name: str, how: str) -> None:
    got = refusals[(name, how)]
    assert got.code == 1 and "Traceback" not in got.log, got.log
    assert str(got.path) in got.log.splitlines()[-1], got.log  # the last word names it
    assert " serving " not in got.log, got.log
    assert got.after == got.before  # the damaged file and every other one, as they were


def test_a_damaged_dht_index_stops_cleanly_or_is_lived_with(
        refusals: dict[tuple[str, str], Refusal]) -> None:
    got = refusals[DHT_INDEX]
    assert "Traceback" not in got.log, got.log
    assert got.code is None or (got.code == 1 and str(got.path) in got.log), got.log


# --- the peer face's clock window, 413s, slow headers -----------------------------------------


def _swarm(d: Daemon) -> bytes:
    return bytes.fromhex(d.json("GET", "/v1/status")["swarm_id"])


def _peer_sync(d: Daemon, skew_ms: int = 0) -> tuple[int, dict[str, Any]]:
    """A signed /peer/v1/sync from a new key, dated our clock + `skew_ms`."""
    body = sync.encode_digest(sync.summarize({}))
    who = Identity.from_seed(os.urandom(16))  # a member of d's swarm (d founded it)
    headers = sign_request(who, _swarm(d), "POST", "/peer/v1/sync", body,
                           int(time.time() * 1000) + skew_ms, os.urandom(16)
                           ) | pass_header(d, who)
    req = urllib.request.Request(f"http://{d.dht}/peer/v1/sync", data=body, method="POST",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return resp.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("skew_s", "taken"), [(29, True), (-29, True), (31, False),
                                                (-31, False)])
def test_signed_peer_requests_are_taken_within_30_s_of_our_clock(
        running: Daemon, skew_s: int, taken: bool) -> None:
    code, why = _peer_sync(running, skew_s * 1000)
    if taken:
        assert code == 200, why
    else:
        assert code == 403 and why["reason"] == "stale", why


def _oversized(port: int, head: str, body: Iterable[bytes]) -> tuple[int, dict[str, Any]]:
    """Send `head`, then pour `body` from another thread while the reply is read
    here: a server that refuses early answers before the body is all sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())

        def pour() -> None:
            with contextlib.suppress(OSError):
                for part in body:
                    sock.sendall(part)

        threading.Thread(target=pour, daemon=True).start()
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        return reply.status, json.loads(reply.read())


def _chunked(total: int) -> Iterator[bytes]:
    part = b"{" + b" " * (64 * 1024 - 1)
    for _ in range(total // len(part) + 1):
        yield b"%x\r\n" % len(part) + part + b"\r\n"
    yield b"0\r\n\r\n"


def _api_head(d: Daemon, framing: str) -> str:
    return (f"POST /v1/teach HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n")


def _peer_head(d: Daemon, framing: str) -> str:
    who = Identity.from_seed(os.urandom(16))
    signed = sign_request(who, _swarm(d), "POST", "/peer/v1/delta", b"",
                          int(time.time() * 1000), os.urandom(16)) | pass_header(d, who)
    lines = "".join(f"{k}: {v}\r\n" for k, v in signed.items())
    return f"POST /peer/v1/delta HTTP/1.1\r\nHost: spore\r\n{lines}{framing}\r\n\r\n"


def test_oversized_bodies_get_413_on_both_faces(running: Daemon) -> None:
    api_over, peer_over = API_MAX_BODY + 1, PEER_MAX_BODY + 1
    for framing, body in [(f"Content-Length: {api_over}", [b" " * api_over]),
                          ("Transfer-Encoding: chunked", _chunked(api_over))]:
        code, out = _oversized(running.port, _api_head(running, framing), body)
        assert code == 413 and "limit" in out["error"], (framing, out)
    peer_port = int(running.env["SPORE_DHT_PORT"])
    for framing, body in [(f"Content-Length: {peer_over}", [b"\0" * peer_over]),
                          ("Transfer-Encoding: chunked", _chunked(peer_over))]:
        code, out = _oversized(peer_port, _peer_head(running, framing), body)
        assert code == 413 and out["reason"] == "too_large", (framing, out)
    assert running.json("GET", "/v1/status")["gossip"]["counters"]["refused_too_large"] == 2
    assert running.json("GET", "/healthz")["ok"]


SLOW = 50  # slow connections to each face


class _Slowloris:
    """SLOW connections to each of the two faces that send a request's line and
    headers one byte every half second and never finish them."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000

    def __init__(self, ports: list[int]) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", p), timeout=5)
                      for p in ports for _ in range(SLOW)]
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        while not self.stop.wait(0.5):  # the attacker's pace, not a wait on a condition
            byte = self.HEAD[self.sent % len(self.HEAD):][:1]
            for s in self.socks:
                with contextlib.suppress(OSError):
                    s.send(byte)
            self.sent += 1

    def answered(self) -> int:
        """How many the server has answered or closed (readable: a reply, EOF or RST)."""
        poller = select.poll()
        for s in self.socks:
            poller.register(s, select.POLLIN)
        return len(poller.poll(0))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


@pytest.fixture
def slowloris(running: Daemon) -> Iterator[_Slowloris]:
    attack = _Slowloris([running.port, int(running.env["SPORE_DHT_PORT"])])
    try:
        yield attack
    finally:
        attack.close()


def test_slow_headers_hold_nothing_honest_requests_need(
        running: Daemon, slowloris: _Slowloris) -> None:
    wait_for(lambda: slowloris.sent >= 6, 10, "a few bytes dripped into every connection")
    for _ in range(5):
        started = time.monotonic()
        assert running.healthy()
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        assert _peer_sync(running)[0] == 200
        assert time.monotonic() - started < 1.0
    assert slowloris.answered() == 0  # all still open: the attack really held them


def test_slow_headers_are_closed_by_the_server(running: Daemon, slowloris: _Slowloris) -> None:
    wait_for(lambda: slowloris.answered() == 2 * SLOW, 15,
             "the server to close every connection still sending its headers after 15 s")
