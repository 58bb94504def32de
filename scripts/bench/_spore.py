"""Helpers shared by the benchmarks: a real spore process and a fast client."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPORE = str(Path(sys.executable).parent / "spore")
FAQ_DIR = Path("/usr/share/doc/debian/FAQ")


def free_port(udp: bool = False) -> int:
    """A free TCP port; with udp=True, one free for UDP and TCP (DHT and peer
    HTTP), below the ephemeral range so no outgoing connection takes it meanwhile."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket(type=socket.SOCK_DGRAM) as s, socket.socket() as tcp:
            try:
                if udp:
                    s.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def percentile(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def faq_pairs() -> list[tuple[str, str, str]]:
    """(page#index, question, answer) for every FAQ heading that is a question."""
    from cli.documents import faq_sections

    if not FAQ_DIR.is_dir():
        sys.exit("the Debian FAQ is missing: apt-get install debian-faq")
    out = []
    for page in sorted(FAQ_DIR.glob("*.en.html")):
        for i, (q, a) in enumerate(faq_sections(page.read_text(encoding="utf-8"))):
            if q.rstrip().endswith("?") and a.strip():
                out.append((f"{page.stem}#{i}", q.strip(), a.strip()))
    return out


class Spore:
    """A real `spore node run` process on a free port with its own state dir."""

    def __init__(self, state: Path, threads: int = 1, env: dict[str, str] | None = None
                 ) -> None:
        self.state = state
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPORE_")}
        self.env.update(SPORE_STATE_DIR=str(state), SPORE_CONFIG_DIR=str(state / "conf"),
                        SPORE_PORT=str(self.port), SPORE_ENCODER_THREADS=str(threads),
                        SPORE_LOG_LEVEL="warning", SPORE_MAX_TEXT_BYTES="65536",
                        SPORE_DHT_HOST="127.0.0.1", SPORE_DHT_PORT=str(free_port(udp=True)),
                        # Answers from memory: what these benches compare across
                        # sessions (scripts/bench/generate.py turns words on).
                        SPORE_GENERATE="off")
        self.env.update(env or {})
        self.dht_port = int(self.env["SPORE_DHT_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: http.client.HTTPConnection | None = None
        self.startup_s = 0.0

    def found(self, swarm: str = "bench", *, open_swarm: bool = True,
              puzzle_bits: int | None = 0) -> Spore:
        """Found a swarm here before the first start (`spore init --swarm`).
        The default, an open swarm with free identities (puzzle 0), is the
        swarm from before membership: anyone holding its DNA file joins and
        every voice weighs 1. A spore that founds by itself (`node run` with no
        DNA) founds an invite swarm, which refuses spores holding only its DNA."""
        cmd = [SPORE, "init", "--swarm", swarm, "--json"]
        if open_swarm:
            cmd.append("--open")
            if puzzle_bits is not None:
                cmd += ["--puzzle-bits", str(puzzle_bits)]
        self.state.mkdir(parents=True, exist_ok=True)
        subprocess.run(cmd, env=self.env, check=True, stdout=subprocess.DEVNULL)
        return self

    def __enter__(self) -> Spore:
        start = time.perf_counter()
        self.proc = subprocess.Popen([SPORE, "node", "run"], env=self.env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                self.call("GET", "/healthz")
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit("the spore did not start") from None
                time.sleep(0.05)
        self.startup_s = time.perf_counter() - start
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.conn is not None
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"}
        token = self.state / "api.token"
        if token.exists():  # DNA and membership changes need it, even on loopback
            headers["Authorization"] = f"Bearer {token.read_text().strip()}"
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The daemon closes a kept-alive connection idle for 10 s (its
            # header deadline): the request was not sent; send it again.
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        payload = json.loads(resp.read())
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {payload}")
        return payload

    @property
    def rss_mb(self) -> float:
        assert self.proc is not None
        return rss_mb(self.proc.pid)
