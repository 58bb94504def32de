"""Hostile datagrams at a real spore process's DHT port (real codec, real UDP)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import msgpack
import numpy as np

from dht import codec
from p2pnode.identity import Identity
from p2pnode.records import make_memory
from tests.conftest import Daemon, wait_for
from tests.test_dht_contract import frame

FLOOD = 10_000
RSS_BUDGET_MB = 30.0  # growth allowed while reading 10,000 hostile datagrams


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _dht(d: Daemon) -> dict:  # type: ignore[type-arg]
    return d.cli_json("status")["dht"]  # type: ignore[no-any-return]


def _forgeries(dna_hash: bytes) -> dict[str, tuple[bytes, bytes]]:
    """(key, value) STOREs that must all be refused: signature, content, key."""
    author = Identity.from_seed(b"mallory")
    rec = make_memory(author, question="", answer="The sky is green.",
                      embedding=np.ones(384, np.float32) / 384 ** 0.5, created_ms=1,
                      origin="taught", dna_hash=dna_hash)
    good = codec.encode_content(rec.wire)
    body, sig = msgpack.unpackb(rec.wire)
    fields = msgpack.unpackb(body)
    fields[3] = "The sky is blue."  # altered after signing
    altered = msgpack.packb([msgpack.packb(fields), sig])
    bad_sig = msgpack.packb([body, bytes(64)])
    return {
        "bad signature": (rec.id, codec.KIND_CONTENT + msgpack.packb([bad_sig, []])),
        "altered content": (rec.id, codec.KIND_CONTENT + msgpack.packb([altered, []])),
        "wrong key": (bytes(32), good),
    }


def test_forged_records_are_refused_counted_and_never_served(daemon: Daemon) -> None:
    daemon.start()
    dna_hash = bytes.fromhex(daemon.cli_json("dna", "show")["hash"])
    port = int(daemon.env["SPORE_DHT_PORT"])
    before = _dht(daemon)["counters"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for k, value in _forgeries(dna_hash).values():
            raw.sendto(frame("store", [k, value]), ("127.0.0.1", port))
    wait_for(lambda: sum(v for k, v in _dht(daemon)["counters"].items()
                         if k.startswith("rejected_")) >= sum(
        v for k, v in before.items() if k.startswith("rejected_")) + 3, 30, "3 rejections")
    status = _dht(daemon)
    assert status["store"]["count"] == 0
    for k, _ in _forgeries(dna_hash).values():
        assert daemon.http("GET", f"/v1/dht/locate/{k.hex()}")[1]["holders"] == []


def test_ten_thousand_hostile_datagrams(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.proc is not None
    daemon.cli_json("teach", "Bread needs flour, water, salt and time.")
    port = int(daemon.env["SPORE_DHT_PORT"])
    rss_before = _rss_mb(daemon.proc.pid)
    rng = random.Random(3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for i in range(FLOOD):
            kind = i % 4
            if kind == 0:
                data = rng.randbytes(rng.randrange(300))
            elif kind == 1:
                whole = frame("store", [rng.randbytes(32), rng.randbytes(rng.randrange(900))])
                data = whole[: rng.randrange(len(whole))]
            elif kind == 2:
                data = b"\x00" + rng.randbytes(9000)
            else:
                data = frame(rng.choice(["ping", "find_node", "find_value", "nope"]),
                             [rng.randbytes(rng.randrange(40))])
            raw.sendto(data, ("127.0.0.1", port))
            if i % 200 == 0:  # let the daemon read, so the kernel does not drop
                assert daemon.healthy()
    counters = _dht(daemon)["counters"]
    dropped = sum(counters.get(k, 0) for k in (
        "oversize", "decode_errors", "malformed_requests", "rate_limited"))
    assert dropped > FLOOD // 4, counters
    assert _rss_mb(daemon.proc.pid) - rss_before < RSS_BUDGET_MB
    answer = daemon.cli_json("ask", "what goes into bread?")
    assert "flour" in answer["answer"]
    assert "Traceback" not in daemon.log.read_text()
    assert "exception was never retrieved" not in daemon.log.read_text()
