"""SporeDHT against the stock `kademlia` package: a swarm of real processes on loopback.

Issue 3: on a 32-spore loopback swarm of processes, DHT get and set p50/p99,
and the stock kademlia package's on the same machine in the same run, as
ratios. For each kind in turn (ours, then stock):

1. `--nodes` worker processes (scripts/bench/_dht_node.py), one DHT node each
   on 127.0.0.1 UDP, started in doubling waves; each bootstraps from up to 3
   random nodes already up and says "READY <port>".
2. One more node of the same kind in this process — the measuring node —
   bootstraps from 3 random workers, looks itself up again and waits
   `--settle` seconds.
3. It does `--ops` puts (stock: set) of distinct keys, one at a time, then
   `--ops` gets of the same keys, each timed with perf_counter.
4. All workers are stopped (SIGTERM, then SIGKILL) before the next kind.

Ours is built as in dht_stock.py: ksize 20, 3 replicas, write quorum 2,
reads ask 6, Ed25519-signed toy values verified on every store and fetch,
memory store, per-IP caps lifted for loopback. Stock is
kademlia.network.Server with ksize 20, which stores every value on the 20
closest nodes — the measuring node among them for most keys, and its get
then answers from local storage without a packet, hence the "remote only"
row. Both kinds get the same keys and the same `--value-bytes` values.

    .venv/bin/python scripts/bench/dht_procs.py [--nodes 32] [--ops 200]
        [--value-bytes 200] [--settle 2] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from types import FrameType
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _dht_node import KINDS, STOCK_KSIZE, start_ours, start_stock  # noqa: E402
from _spore import percentile  # noqa: E402
from dht_stock import CONFIG, HOST, k32, signed_value  # noqa: E402
from kademlia.network import Server  # noqa: E402
from kademlia.utils import digest  # noqa: E402

from dht.server import SporeDHT  # noqa: E402
from p2pnode.errors import SporeError  # noqa: E402

NODE_SCRIPT = Path(__file__).resolve().parent / "_dht_node.py"
READY_TIMEOUT_S = 60.0  # a wave of workers importing at once on 2 cores
OP_TIMEOUT_S = 30.0  # one put or get; stock's RPC timeout is 5 s per hop
Addr = tuple[str, int]
Item = tuple[str, bytes]  # key text, value


# --- worker processes ----------------------------------------------------------------


class Workers:
    """The worker processes of one kind; `close()` ends every one of them."""

    def __init__(self, kind: str, logdir: Path, rng: random.Random) -> None:
        self.kind, self.logdir, self.rng = kind, logdir, rng
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.ports: list[int] = []

    def spawn(self, n: int) -> list[int]:
        """Start n workers in doubling waves (1, 1, 2, 4, …); returns their ports."""
        while len(self.ports) < n:
            wave = min(n - len(self.ports), max(1, len(self.ports)))
            started = [self._start(self._peers()) for _ in range(wave)]
            self.ports += self._await_ready(started)
        return self.ports

    def _peers(self) -> list[int]:
        return self.rng.sample(self.ports, min(3, len(self.ports)))

    def _start(self, peers: list[int]) -> subprocess.Popen[bytes]:
        log = self.logdir / f"{self.kind}-{len(self.procs)}.log"
        cmd = [sys.executable, str(NODE_SCRIPT), "--kind", self.kind, "--watch-stdin",
               *(f"--peer={HOST}:{p}" for p in peers)]
        with log.open("wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err)
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def _await_ready(self, procs: list[subprocess.Popen[bytes]]) -> list[int]:
        ports: dict[int, int] = {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            for i, proc in enumerate(procs):
                assert proc.stdout is not None
                sel.register(proc.stdout, selectors.EVENT_READ, i)
            while len(ports) < len(procs):
                left = deadline - time.monotonic()
                events = sel.select(left) if left > 0 else []
                if not events:
                    raise RuntimeError(f"{self.kind} workers not ready in {READY_TIMEOUT_S} s")
                for key, _ in events:
                    ports[key.data] = self._read_ready(procs[key.data], key.fileobj)
                    sel.unregister(key.fileobj)
        return [ports[i] for i in range(len(procs))]

    def _read_ready(self, proc: subprocess.Popen[bytes], out: Any) -> int:
        stream: IO[bytes] = out
        word, _, port = stream.readline().decode().partition(" ")
        if word != "READY":
            tail = self.logs[self.procs.index(proc)].read_text()[-2000:]
            raise RuntimeError(f"a {self.kind} worker failed to start:\n{tail}")
        return int(port)

    def check_alive(self) -> None:
        dead = [(i, p.returncode) for i, p in enumerate(self.procs) if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{len(dead)} {self.kind} workers exited (index, code): {dead}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proc in self.procs:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()

    def stderr_summary(self) -> dict[str, Any]:
        lines = [ln for log in self.logs if log.exists()
                 for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        return {"lines": len(lines), "sample": list(dict.fromkeys(lines))[:3],
                "exit_codes": dict(Counter(str(p.returncode) for p in self.procs))}


# --- the measuring node --------------------------------------------------------------


class Ours:
    def __init__(self, node: SporeDHT) -> None:
        self.node = node

    @classmethod
    async def start(cls, peers: list[Addr]) -> Ours:
        node, _ = await start_ours(0, peers)
        await node.lookup(node.node_id)
        return cls(node)

    async def put(self, key: str, value: bytes) -> bool:
        try:
            return await self.node.put(k32(key), value) >= CONFIG.write_quorum
        except SporeError:
            return False

    async def get(self, key: str) -> bytes | None:
        return await self.node.get(k32(key))

    def holds(self, key: str) -> bool:
        return self.node.storage.get(k32(key)) is not None

    def contacts(self) -> int:
        return len(self.node.contacts())

    async def stop(self) -> None:
        await self.node.stop()


class Stock:
    def __init__(self, node: Server) -> None:
        self.node = node

    @classmethod
    async def start(cls, peers: list[Addr]) -> Stock:
        node, _ = await start_stock(0, peers)
        await node.bootstrap(peers)  # the stock way to look itself up again
        return cls(node)

    async def put(self, key: str, value: bytes) -> bool:
        return bool(await self.node.set(key, value))

    async def get(self, key: str) -> bytes | None:
        got = await self.node.get(key)
        return got if isinstance(got, bytes) else None

    def holds(self, key: str) -> bool:
        return self.node.storage.get(digest(key)) is not None

    def contacts(self) -> int:
        return sum(len(b.get_nodes()) for b in self.node.protocol.router.buckets)

    async def stop(self) -> None:
        self.node.stop()


async def timed(op: Awaitable[Any]) -> tuple[Any, float, bool]:
    """(result or None, ms, timed out)."""
    t0 = time.perf_counter()
    try:
        result, late = await asyncio.wait_for(op, OP_TIMEOUT_S), False
    except TimeoutError:
        result, late = None, True
    return result, (time.perf_counter() - t0) * 1000, late


def summary(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"n": len(ms), "p50": round(percentile(ms, 50), 2),
            "p99": round(percentile(ms, 99), 2), "max": round(max(ms), 2)}


async def measure(kind: str, ports: list[int], items: list[Item], settle_s: float,
                  rng: random.Random) -> dict[str, Any]:
    errors = _count_loop_errors()
    peers = [(HOST, p) for p in rng.sample(ports, min(3, len(ports)))]
    t0 = time.perf_counter()
    node: Ours | Stock = await (Ours.start(peers) if kind == "ours" else Stock.start(peers))
    await asyncio.sleep(settle_s)  # let the workers' answers to our lookups land
    join_s = time.perf_counter() - t0
    ms: dict[str, list[float]] = {"set": [], "get": [], "get_remote": []}
    ok: Counter[str] = Counter()
    try:
        for key, value in items:
            done, t, late = await timed(node.put(key, value))
            ms["set"].append(t)
            ok["set"] += bool(done)
            ok["set_timeouts"] += late
        for key, value in items:
            local = node.holds(key)
            got, t, late = await timed(node.get(key))
            ms["get"].append(t)
            ms["get_remote"] += [] if local else [t]
            ok["get"] += got == value
            ok["get_timeouts"] += late
        contacts = node.contacts()
    finally:
        await node.stop()
    return {"join_s": round(join_s, 2), "contacts": contacts, "ok": dict(ok),
            "ms": {k: summary(v) for k, v in ms.items()}, "loop_errors": dict(errors)}


def _count_loop_errors() -> Counter[str]:
    errors: Counter[str] = Counter()

    def on_error(_: Any, ctx: dict[str, Any]) -> None:
        exc = ctx.get("exception")
        errors[type(exc).__name__ if exc else str(ctx.get("message", "?"))[:40]] += 1

    asyncio.get_running_loop().set_exception_handler(on_error)
    return errors


# --- one kind, then the other --------------------------------------------------------


def run_kind(kind: str, args: argparse.Namespace, items: list[Item], logdir: Path
             ) -> dict[str, Any]:
    rng = random.Random(f"{args.seed} {kind}")
    workers = Workers(kind, logdir, rng)
    t0 = time.perf_counter()
    try:
        ports = workers.spawn(args.nodes)
        spawn_s = time.perf_counter() - t0
        workers.check_alive()
        result = asyncio.run(measure(kind, ports, items, args.settle, rng))
        workers.check_alive()  # a worker that died mid-run makes the figures meaningless
    finally:
        workers.close()
    result.update(spawn_s=round(spawn_s, 1), wall_s=round(time.perf_counter() - t0, 1),
                  workers=len(workers.procs), worker_stderr=workers.stderr_summary())
    return result


def make_items(args: argparse.Namespace) -> list[Item]:
    """Distinct keys and signed values of exactly --value-bytes (the same for both kinds)."""
    rng = random.Random(args.seed)
    keys = [f"procs {i}" for i in range(args.ops)]
    return [(k, signed_value(k32(k), rng.randbytes(args.value_bytes - 67))) for k in keys]


def ratio(stock: float, ours: float) -> str:
    return f"{stock / ours:.2f}x" if ours > 0 else "-"


def print_table(r: dict[str, Any]) -> None:
    p, ours, stock = r["params"], r["ours"], r["stock"]
    print(f"loopback UDP, {p['nodes']} worker processes + 1 measuring node per kind, "
          f"{p['value_bytes']}-byte values, {p['ops']} sets then {p['ops']} gets, one at a "
          f"time, from the measuring node; stock ksize {STOCK_KSIZE}")
    print(f"\n{'':<10}{'spawn s':>9}{'join s':>8}{'contacts':>10}{'sets ok':>9}"
          f"{'gets ok':>9}{'timeouts':>10}{'worker stderr lines':>21}")
    for name, k in (("SporeDHT", ours), ("stock", stock)):
        late = k["ok"].get("set_timeouts", 0) + k["ok"].get("get_timeouts", 0)
        print(f"{name:<10}{k['spawn_s']:>9}{k['join_s']:>8}{k['contacts']:>10}"
              f"{k['ok'].get('set', 0):>9}{k['ok'].get('get', 0):>9}{late:>10}"
              f"{k['worker_stderr']['lines']:>21}")
    print(f"\n{'ms':<26}{'SporeDHT p50':>13}{'p99':>9}{'stock p50':>11}{'p99':>9}"
          f"{'stock/ours p50':>16}{'p99':>8}")
    for name, row in (("set (ours: put)", "set"), ("get", "get"),
                      ("get, remote only", "get_remote")):
        a, b = ours["ms"][row], stock["ms"][row]
        label = f"{name} ({a['n']}/{b['n']})" if row == "get_remote" else name
        print(f"{label:<26}{a['p50']:>13}{a['p99']:>9}{b['p50']:>11}{b['p99']:>9}"
              f"{ratio(b['p50'], a['p50']):>16}{ratio(b['p99'], a['p99']):>8}")
    for name, k in (("SporeDHT", ours), ("stock", stock)):
        for line in k["worker_stderr"]["sample"]:
            print(f"{name} worker stderr: {line[:120]}")
        if k["loop_errors"]:
            print(f"{name} measuring node loop errors: {k['loop_errors']}")
    print(f"\nwall s: SporeDHT {ours['wall_s']}, stock {stock['wall_s']}, total {r['wall_s']}")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the workers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=32, help="worker processes per kind")
    ap.add_argument("--ops", type=int, default=200, help="sets, then as many gets")
    ap.add_argument("--value-bytes", type=int, default=200)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after joining")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.nodes < 1 or args.ops < 1 or args.value_bytes < 67:
        ap.error("need --nodes >= 1, --ops >= 1, --value-bytes >= 67 (prefix + signature)")
    logging.basicConfig(level=logging.CRITICAL)  # the stock package logs every timeout
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    t0 = time.perf_counter()
    items = make_items(args)
    report: dict[str, Any] = {"params": vars(args)}
    with tempfile.TemporaryDirectory(prefix="dht_procs-") as tmp:
        for kind in KINDS:
            report[kind] = run_kind(kind, args, items, Path(tmp))
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the workers are already stopped by run_kind's finally
        sys.exit(130)
