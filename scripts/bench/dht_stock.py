"""SporeDHT against the stock `kademlia` package, on loopback UDP, in one run.

Both swarms live in this one process on one event loop, on real UDP sockets
on 127.0.0.1; operations are timed one at a time, alternating ours / stock,
so neither gets a quieter machine.

1. Latency: N SporeDHT nodes (ksize 20, 3 replicas, write quorum 2, reads
   ask 6) and N stock ``kademlia.network.Server`` (ksize 20). Each does
   `--ops` puts (stock: set) of ~1.6 KB values from random nodes, then the
   same number of gets from random nodes; p50/p99 side by side with ratios.
   The stock get answers from local storage when the asking node holds the
   key (with ksize 20 most do), so its remote-only figures are shown too.
   Our values carry an Ed25519 signature that every store and fetch
   verifies (the toy stands in for one signed record; dht.codec's bucket
   values carry up to 32 signatures).
2. Faults: fresh swarms (stock with ksize 3; ours with 3 replicas), `--fault
   -values` values put, then a third of the nodes (the same indices in both)
   closed at once. Every survivor then gets its share of the values one
   after another, all survivors in parallel, right away: share of gets that
   return the value, and the time each took (stock's RPC timeout is 5 s;
   ours 1.5 s, and a node skips an address that timed out for 30 s).

    .venv/bin/python scripts/bench/dht_stock.py [--nodes 32] [--ops 200]
        [--fault-values 200] [--value-bytes 1600] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kademlia.network import Server  # noqa: E402

from dht.fake import MemoryStore  # noqa: E402
from dht.server import DhtConfig, SporeDHT, ValueRules  # noqa: E402
from p2pnode.errors import SporeError, VerifyError  # noqa: E402
from p2pnode.identity import Identity, verify  # noqa: E402

DNA = hashlib.sha256(b"dht stock benchmark").digest()
VALUE_DOMAIN = b"sporemind/bench/value/v1"
AUTHOR = Identity.from_seed(b"bench author")
# Loopback puts every node on one IP: lift the per-IP cap and the rate limit.
CONFIG = DhtConfig(max_contacts_per_ip=1000, rate_per_s=1e6, rate_burst=1e6)
HOST = "127.0.0.1"


# --- our values: b"ok:" + signature + payload, verified on every store and fetch ----


def signed_value(key32: bytes, payload: bytes) -> bytes:
    return b"ok:" + AUTHOR.sign(VALUE_DOMAIN, key32 + payload) + payload


def validate(key32: bytes, data: bytes) -> tuple[str, bytes]:
    if len(key32) != 32 or not data.startswith(b"ok:") or len(data) < 67:
        raise VerifyError("malformed bench value")
    verify(AUTHOR.public_key, VALUE_DOMAIN, key32 + data[67:], data[3:67])
    return "bench", data


RULES = ValueRules(validate=validate, merge=lambda k, old, new: max(old, new),
                   key_id=lambda k: hashlib.sha256(b"key" + k).digest()[:20],
                   node_id=lambda pub: hashlib.sha256(b"node" + pub).digest()[:20])


# --- swarms --------------------------------------------------------------------------


class Ours:
    name = "SporeDHT"

    def __init__(self, nodes: list[SporeDHT]) -> None:
        self.nodes = nodes

    @classmethod
    async def build(cls, n: int, rng: random.Random, tag: str) -> Ours:
        nodes = []
        for i in range(n):
            node = SporeDHT(identity=Identity.from_seed(b"%s %d" % (tag.encode(), i)),
                            dna_hash=DNA, store=MemoryStore(RULES), rules=RULES, config=CONFIG)
            await node.start(HOST, 0)
            if nodes:
                await node.bootstrap([p.address for p in rng.sample(nodes, min(3, len(nodes)))])
            nodes.append(node)
        return cls(nodes)

    async def put(self, i: int, key: str, value: bytes) -> bool:
        try:
            return await self.nodes[i].put(k32(key), value) >= 2
        except SporeError:
            return False

    async def get(self, i: int, key: str) -> bytes | None:
        return await self.nodes[i].get(k32(key))

    def holds(self, i: int, key: str) -> bool:
        return self.nodes[i].storage.get(k32(key)) is not None

    async def kill(self, idx: list[int]) -> None:
        await asyncio.gather(*(self.nodes[i].stop() for i in idx))

    async def close(self, skip: set[int]) -> None:
        await asyncio.gather(*(n.stop() for i, n in enumerate(self.nodes) if i not in skip))


class Stock:
    def __init__(self, nodes: list[Server], ksize: int) -> None:
        self.nodes, self.name = nodes, f"stock k={ksize}"

    @classmethod
    async def build(cls, n: int, rng: random.Random, ksize: int) -> Stock:
        nodes: list[Server] = []
        addrs: list[tuple[str, int]] = []
        for _ in range(n):
            node = Server(ksize=ksize, node_id=rng.randbytes(20))
            await node.listen(0, HOST)
            addr = node.transport.get_extra_info("sockname")[:2]
            if nodes:
                await node.bootstrap(rng.sample(addrs, min(3, len(addrs))))
            nodes.append(node)
            addrs.append(addr)
        return cls(nodes, ksize)

    async def put(self, i: int, key: str, value: bytes) -> bool:
        return bool(await self.nodes[i].set(key, value))

    async def get(self, i: int, key: str) -> bytes | None:
        got = await self.nodes[i].get(key)
        return got if isinstance(got, bytes) else None

    def holds(self, i: int, key: str) -> bool:
        from kademlia.utils import digest

        return self.nodes[i].storage.get(digest(key)) is not None

    async def kill(self, idx: list[int]) -> None:
        for i in idx:
            self.nodes[i].stop()

    async def close(self, skip: set[int]) -> None:
        for i, n in enumerate(self.nodes):
            if i not in skip:
                n.stop()


def k32(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def payload(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


async def timed(op: Awaitable[Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = await op
    return result, (time.perf_counter() - t0) * 1000


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return round(s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))], 2)


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50": pct(ms, 50), "p99": pct(ms, 99), "max": pct(ms, 100)}


# --- 1. latency ----------------------------------------------------------------------


async def latency(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    t0 = time.perf_counter()
    ours = await Ours.build(args.nodes, rng, "lat")
    boot_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    stock = await Stock.build(args.nodes, rng, 20)
    boot_stock = time.perf_counter() - t0
    ms: dict[str, list[float]] = {k: [] for k in (
        "ours_put", "stock_put", "ours_get", "stock_get", "stock_get_remote")}
    ok: Counter[str] = Counter()
    keys = []
    for i in range(args.ops):
        key, body = f"lat {i}", payload(rng, args.value_bytes - 67)
        value = signed_value(k32(key), body)
        who = rng.randrange(args.nodes)
        for swarm, tag in ((ours, "ours"), (stock, "stock")):
            done, t = await timed(swarm.put(who, key, value))
            ms[f"{tag}_put"].append(t)
            ok[f"{tag}_put"] += done
        keys.append((key, value))
    for key, value in keys:
        who = rng.randrange(args.nodes)
        got, t = await timed(ours.get(who, key))
        ms["ours_get"].append(t)
        ok["ours_get"] += got == value
        local = stock.holds(who, key)
        got, t = await timed(stock.get(who, key))
        ms["stock_get"].append(t)
        ok["stock_get"] += got == value
        if not local:
            ms["stock_get_remote"].append(t)
    stock_holders = [sum(stock.holds(i, k) for i in range(args.nodes)) for k, _ in keys]
    ours_holders = [sum(ours.holds(i, k) for i in range(args.nodes)) for k, _ in keys]
    await ours.close(set())
    await stock.close(set())
    return {
        "bootstrap_s": {"ours": round(boot_ours, 2), "stock": round(boot_stock, 2)},
        "ms": {k: summary(v) for k, v in ms.items()},
        "ok": dict(ok), "ops": args.ops,
        "holders_mean": {"ours": round(sum(ours_holders) / len(keys), 1),
                         "stock": round(sum(stock_holders) / len(keys), 1)},
    }


# --- 2. faults -----------------------------------------------------------------------


async def fault_run(swarm: Ours | Stock, args: argparse.Namespace, rng: random.Random,
                    dead: list[int], value_of: Callable[[str], bytes]) -> dict[str, Any]:
    n = len(swarm.nodes)
    keys = [f"fault {i}" for i in range(args.fault_values)]
    put_ok = 0
    for key in keys:
        put_ok += await swarm.put(rng.randrange(n), key, value_of(key))
    await swarm.kill(dead)
    gone = set(dead)
    alive = [i for i in range(n) if i not in gone]
    plan: dict[int, list[str]] = {i: [] for i in alive}
    for j, key in enumerate(keys):
        plan[alive[j % len(alive)]].append(key)
    per_get: list[float] = []
    first: list[float] = []
    got_ok = 0

    async def client(i: int) -> None:
        nonlocal got_ok
        for j, key in enumerate(plan[i]):
            got, t = await timed(swarm.get(i, key))
            per_get.append(t)
            if j == 0:
                first.append(t)
            got_ok += got == value_of(key)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in alive))
    wall = time.perf_counter() - t0
    await swarm.close(gone)
    return {"swarm": swarm.name, "puts_ok": put_ok, "values": len(keys), "killed": len(dead),
            "nodes": n, "gets_ok": got_ok, "gets": len(keys),
            "ms": summary(per_get), "first_get_ms": summary(first),
            "gets_wall_s": round(wall, 1)}


async def faults(args: argparse.Namespace, rng: random.Random) -> list[dict[str, Any]]:
    dead = sorted(rng.sample(range(args.nodes), round(args.nodes * args.kill)))
    payloads: dict[str, bytes] = {}

    def body(key: str) -> bytes:
        if key not in payloads:
            payloads[key] = payload(rng, args.value_bytes - 67)
        return payloads[key]

    def value_of(key: str) -> bytes:  # the same bytes for both swarms
        return signed_value(k32(key), body(key))

    out = []
    stock = await Stock.build(args.nodes, rng, 3)
    out.append(await fault_run(stock, args, rng, dead, value_of))
    ours = await Ours.build(args.nodes, rng, "fault")
    out.append(await fault_run(ours, args, rng, dead, value_of))
    return out


# --- output --------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def print_tables(r: dict[str, Any]) -> None:
    p, lat = r["params"], r["latency"]
    m = lat["ms"]
    print(f"loopback UDP, one process, {p['nodes']} nodes per swarm, {p['value_bytes']}-byte "
          f"values, {lat['ops']} puts then {lat['ops']} gets each")
    print(f"bootstrap s: SporeDHT {lat['bootstrap_s']['ours']}, stock "
          f"{lat['bootstrap_s']['stock']}; holders per value: SporeDHT "
          f"{lat['holders_mean']['ours']}, stock {lat['holders_mean']['stock']}")
    print(f"\n{'ms':<26}{'SporeDHT p50':>13}{'p99':>9}{'stock k=20 p50':>16}{'p99':>9}"
          f"{'ratio p50':>11}{'p99':>8}{'ok ours/stock':>16}")
    rows = [("put (stock: set)", "ours_put", "stock_put", "put"),
            ("get", "ours_get", "stock_get", "get"),
            (f"get, stock remote ({m['stock_get_remote']['n']})", "ours_get",
             "stock_get_remote", None)]
    for name, a, b, okk in rows:
        oks = (f"{lat['ok'].get('ours_' + okk, 0)}/{lat['ok'].get('stock_' + okk, 0)}"
               if okk else "")
        print(f"{name:<26}{m[a]['p50']:>13}{m[a]['p99']:>9}{m[b]['p50']:>16}{m[b]['p99']:>9}"
              f"{ratio(m[a]['p50'], m[b]['p50']):>11}{ratio(m[a]['p99'], m[b]['p99']):>8}"
              f"{oks:>16}")
    f0 = r["faults"][0]
    print(f"\nafter closing {f0['killed']} of {f0['nodes']} nodes at once, every survivor "
          f"gets its share of {f0['gets']} values, survivors in parallel:")
    print(f"{'':<14}{'puts ok':>9}{'gets ok':>13}{'ms p50':>9}{'p99':>9}{'max':>9}"
          f"{'1st get p50':>13}{'wall s':>8}")
    for f in r["faults"]:
        share = f"{f['gets_ok']}/{f['gets']}"
        print(f"{f['swarm']:<14}{f['puts_ok']:>9}{share:>13}{f['ms']['p50']:>9}"
              f"{f['ms']['p99']:>9}{f['ms']['max']:>9}{f['first_get_ms']['p50']:>13}"
              f"{f['gets_wall_s']:>8}")
    errs = r["loop_errors"]
    print(f"\nunhandled errors reported by the event loop: {sum(errs.values())}"
          + (f" ({', '.join(f'{k}: {v}' for k, v in errs.items())})" if errs else "")
          + f"; total wall {r['wall_s']} s")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    errors: Counter[str] = Counter()

    def on_error(_: Any, ctx: dict[str, Any]) -> None:
        exc = ctx.get("exception")
        errors[type(exc).__name__ if exc else ctx.get("message", "?")[:40]] += 1

    asyncio.get_running_loop().set_exception_handler(on_error)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"params": vars(args)}
    report["latency"] = await latency(args, rng)
    report["faults"] = await faults(args, rng)
    report["loop_errors"] = dict(errors)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=32)
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--fault-values", type=int, default=200)
    ap.add_argument("--kill", type=float, default=1 / 3)
    ap.add_argument("--value-bytes", type=int, default=1600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the stock package logs every timeout
    report = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_tables(report)


if __name__ == "__main__":
    main()
