"""A swarm of N SporeDHT nodes on the in-memory network, in one process.

Real SporeDHT objects (signed-challenge admission with Ed25519 identities,
the hardened protocol, lookups, 3 replicas, read repair) talk over
dht.fake.FakeNetwork. Values are a toy (b"ok:" + bytes, the larger wins a
merge) held in a dict, as in tests/test_dht_contract.py, so 10,000 nodes fit.

Time is virtual: the event loop's clock jumps to the next timer whenever
nothing is ready, so an RPC timeout (1.5 s) costs no wall time and CPU load
never causes a spurious timeout. Latencies below are virtual (the modelled
link latency plus timeouts); wall times are real. Everything random comes
from one seeded random.Random, so a run is reproducible.

Phases:

1. start N nodes; each joins by bootstrapping from a few random nodes that
   joined before it (batches join concurrently);
2. lookups of random 160-bit targets from random nodes: rounds (hops),
   find_node RPCs, virtual latency, and whether the k closest live nodes
   (computed from the true id set) were found;
3. put values from random authors, get each from a random other node;
4. remove a share of the nodes at random (stop them: their sockets close);
   count the live holders of every value and get every value (no republish);
5. every surviving author republishes its values once; census and gets again.

    .venv/bin/python scripts/sim/dht_sim.py [--nodes 10000] [--lookups 1000]
        [--values 1000] [--kill 0.3] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import json
import random
import resource
import selectors
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dht.fake import TOY_RULES, FakeNetwork, MemoryStore  # noqa: E402
from dht.server import DhtConfig, SporeDHT  # noqa: E402
from p2pnode.errors import SporeError  # noqa: E402
from p2pnode.identity import Identity  # noqa: E402

T = TypeVar("T")
DNA = hashlib.sha256(b"dht simulation swarm").digest()
_LONGEST_WAIT_S = 3600.0  # no legitimate wait is longer: anything more is a deadlock


# --- a virtual clock -----------------------------------------------------------------


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock advances to the next timer instead of sleeping.

    Only the FakeNetwork carries datagrams (call_soon/call_later), so the
    selector never has real I/O to wait for beyond the loop's own self-pipe.
    """

    def __init__(self) -> None:
        self._now = 0.0
        loop = self

        class _Selector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
            def select(self, timeout: float | None = None) -> list[Any]:
                events = super().select(0)
                if events or timeout == 0:
                    return events  # type: ignore[no-any-return]
                if timeout is None or timeout > _LONGEST_WAIT_S:
                    raise RuntimeError("simulation deadlock: nothing scheduled")
                loop._now += timeout
                return events  # type: ignore[no-any-return]

        super().__init__(_Selector())

    def time(self) -> float:
        return self._now


# --- toy values (as in tests/test_dht_contract.py) --------------------------------


RULES = TOY_RULES


# --- instrumented node ---------------------------------------------------------------

_RPCS: ContextVar[list[int] | None] = ContextVar("rpcs", default=None)


class SimDHT(SporeDHT):
    """SporeDHT that counts the find_node RPCs of the operation in progress."""

    async def _ask_nodes(self, node: Any, target: bytes) -> Any:
        box = _RPCS.get()
        if box is not None:
            box[0] += 1
        return await super()._ask_nodes(node, target)


def host_of(i: int) -> str:
    n = i + 1
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


async def measured(op: Awaitable[T]) -> tuple[T, float, int]:
    """(result, virtual seconds, find_node RPCs) of one operation."""
    loop = asyncio.get_running_loop()
    box = [0]
    _RPCS.set(box)
    start = loop.time()
    result = await op
    return result, loop.time() - start, box[0]


async def bounded(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run the jobs with at most `limit` in flight; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


# --- the simulation ------------------------------------------------------------------


class Sim:
    def __init__(self, args: argparse.Namespace, rng: random.Random) -> None:
        self.args, self.rng = args, rng
        self.net = FakeNetwork(rng=random.Random(rng.getrandbits(64)),
                               latency_s=args.latency_ms / 1000,
                               jitter_s=args.jitter_ms / 1000, loss=args.loss)
        self.config = DhtConfig(refresh_interval_s=1e7)  # no refresh within the run
        self.nodes: list[SimDHT] = []
        self.live: list[SimDHT] = []
        self.report: dict[str, Any] = {"params": vars(args)}
        self.wall: dict[str, float] = {}

    def phase(self, name: str, started: float) -> None:
        self.wall[name] = round(time.perf_counter() - started, 1)
        print(f"  [{name}: {self.wall[name]} s wall]", file=sys.stderr, flush=True)

    async def run(self) -> dict[str, Any]:
        await self.build()
        await self.lookups()
        values = await self.put_values()
        await self.fail_and_recover(values)
        self.report["wall_s"] = {**self.wall, "total": round(sum(self.wall.values()), 1)}
        self.report["peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        self.report["network"] = dict(self.net.counters)
        self.report["node_counters"] = self.counter_sums()
        await asyncio.gather(*(n.stop() for n in self.live))
        return self.report

    async def build(self) -> None:
        args, rng, loop = self.args, self.rng, asyncio.get_running_loop()
        t0 = time.perf_counter()
        for i in range(args.nodes):
            node = SimDHT(identity=Identity.from_seed(b"sim %d %d" % (args.seed, i)),
                          dna_hash=DNA, store=MemoryStore(), rules=RULES, config=self.config,
                          bind=self.net.bind, clock=loop.time)
            await node.start(host_of(i), 0)
            self.nodes.append(node)
        self.phase("start", t0)
        t0, vt0 = time.perf_counter(), loop.time()
        joined, answered, asked = [self.nodes[0]], 0, 0
        while len(joined) < len(self.nodes):
            size = min(len(joined), args.join_batch, len(self.nodes) - len(joined))
            batch = self.nodes[len(joined): len(joined) + size]
            seeds = [rng.sample(joined, min(args.seeds, len(joined))) for _ in batch]
            got = await asyncio.gather(*(
                n.bootstrap([s.address for s in ss]) for n, ss in zip(batch, seeds, strict=True)))
            answered += sum(got)
            asked += sum(len(ss) for ss in seeds)
            joined += batch
        self.phase("bootstrap", t0)
        self.live = list(self.nodes)
        sizes = [len(n.contacts()) for n in self.nodes]
        admitted = [len(n.proto.peers()) for n in self.nodes]
        self.report["bootstrap"] = {
            "seeds_answered_pct": round(100 * answered / max(1, asked), 2),
            "virtual_s": round(loop.time() - vt0, 1),
            "table_p50": pct(sizes, 50), "table_min": min(sizes), "table_max": max(sizes),
            "admitted_p50": pct(admitted, 50), "admitted_max": max(admitted),
        }

    def true_closest(self, target: bytes, k: int) -> list[bytes]:
        t = int.from_bytes(target, "big")
        ids = heapq.nsmallest(k, (int.from_bytes(n.node_id, "big") for n in self.live),
                              key=lambda x: x ^ t)
        return [x.to_bytes(20, "big") for x in ids]

    async def lookups(self) -> None:
        args, rng, k = self.args, self.rng, self.config.ksize
        t0 = time.perf_counter()
        plan = [(rng.choice(self.live), rng.getrandbits(160).to_bytes(20, "big"))
                for _ in range(args.lookups)]
        results = await bounded([lambda n=n, t=t: measured(n.lookup(t)) for n, t in plan],
                                args.concurrency)
        exact = top1 = top3 = 0
        recall: list[float] = []
        for (_, target), (found, _, _) in zip(plan, results, strict=True):
            truth = self.true_closest(target, k)
            got = [n.id for n in found.nodes]
            exact += set(got) == set(truth)
            top1 += bool(got) and got[0] == truth[0]
            top3 += got[:3] == truth[:3]
            recall.append(len(set(got) & set(truth)) / k)
        hops = Counter(found.hops for found, _, _ in results)
        rpcs = [float(r) for _, _, r in results]
        vts = [v * 1000 for _, v, _ in results]
        self.report["lookups"] = {
            "count": len(plan),
            "rounds": dict(sorted(hops.items())),
            "rounds_mean": round(sum(h * c for h, c in hops.items()) / len(plan), 2),
            "rpcs_p50": pct(rpcs, 50), "rpcs_p99": pct(rpcs, 99),
            "ms_p50": round(pct(vts, 50), 1), "ms_p99": round(pct(vts, 99), 1),
            "exact_k_pct": round(100 * exact / len(plan), 1),
            "recall_k_pct": round(100 * sum(recall) / len(plan), 2),
            "closest_found_pct": round(100 * top1 / len(plan), 1),
            "closest3_found_pct": round(100 * top3 / len(plan), 1),
        }
        self.phase("lookups", t0)

    async def put_values(self) -> list[tuple[bytes, bytes, SimDHT]]:
        args, rng = self.args, self.rng
        t0 = time.perf_counter()
        values = []
        for i in range(args.values):
            k32 = hashlib.sha256(b"value %d %d" % (args.seed, i)).digest()
            body = b"ok:%d:" % i + rng.randbytes(max(0, args.value_bytes - 12))
            values.append((k32, body, rng.choice(self.live)))

        async def put(k32: bytes, v: bytes, author: SimDHT) -> tuple[int, float]:
            try:
                acks, vt, _ = await measured(author.put(k32, v))
            except SporeError:
                return 0, 0.0
            return acks, vt

        results = await bounded([lambda a=a: put(*a) for a in values], args.concurrency)
        acks = Counter(a for a, _ in results)
        vts = [v * 1000 for a, v in results if a]
        self.report["puts"] = {
            "count": len(values), "acks": dict(sorted(acks.items())),
            "ok_pct": round(100 * sum(a >= 2 for a, _ in results) / len(values), 1),
            "ms_p50": round(pct(vts, 50), 1), "ms_p99": round(pct(vts, 99), 1),
        }
        self.report["holders_after_put"] = self.census(values)
        self.report["gets_before_kill"] = await self.get_all(values)
        self.phase("puts", t0)
        return values

    def census(self, values: list[tuple[bytes, bytes, SimDHT]]) -> dict[str, int]:
        """How many values have 0, 1, 2, 3, 4+ live holders holding the value put."""
        want = {k: v for k, v, _ in values}
        held: Counter[bytes] = Counter()
        for node in self.live:
            for k, v in node.storage.values.items():  # type: ignore[attr-defined]
                if want.get(k) == v:
                    held[k] += 1
        hist = Counter(min(held[k], 4) for k in want)
        return {("4+" if h == 4 else str(h)): hist[h] for h in range(5)}

    async def get_all(self, values: list[tuple[bytes, bytes, SimDHT]]) -> dict[str, Any]:
        rng = self.rng
        plan = [(k, v, rng.choice(self.live)) for k, v, _ in values]
        results = await bounded(
            [lambda k=k, n=n: measured(n.get(k)) for k, _, n in plan], self.args.concurrency)
        ok = sum(got == v for (_, v, _), (got, _, _) in zip(plan, results, strict=True))
        vts = [vt * 1000 for _, vt, _ in results]
        return {"count": len(plan), "ok": ok, "ok_pct": round(100 * ok / len(plan), 2),
                "ms_p50": round(pct(vts, 50), 1), "ms_p99": round(pct(vts, 99), 1),
                "ms_max": round(max(vts), 1)}

    async def fail_and_recover(self, values: list[tuple[bytes, bytes, SimDHT]]) -> None:
        args, rng = self.args, self.rng
        t0 = time.perf_counter()
        dead = rng.sample(self.nodes, round(args.kill * len(self.nodes)))
        await asyncio.gather(*(n.stop() for n in dead))
        gone = {id(n) for n in dead}
        self.live = [n for n in self.nodes if id(n) not in gone]
        authors_alive = sum(id(a) not in gone for _, _, a in values)
        self.report["kill"] = {"killed": len(dead), "live": len(self.live),
                               "values_with_live_author": authors_alive}
        self.report["holders_after_kill"] = self.census(values)
        self.report["gets_no_republish"] = await self.get_all(values)
        self.report["holders_after_gets"] = self.census(values)
        self.phase("kill+gets", t0)
        t0 = time.perf_counter()
        mine: dict[int, list[tuple[bytes, bytes]]] = {}
        authors: dict[int, SimDHT] = {}
        for k, v, a in values:
            if id(a) not in gone:
                mine.setdefault(id(a), []).append((k, v))
                authors[id(a)] = a
        done = await bounded([lambda a=a: a.republish(mine[id(a)]) for a in authors.values()],
                             args.concurrency)
        self.report["republish"] = {"authors": len(authors), "values": authors_alive,
                                    "succeeded": sum(done)}
        self.report["holders_after_republish"] = self.census(values)
        self.report["gets_after_republish"] = await self.get_all(values)
        self.phase("republish+gets", t0)

    def counter_sums(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for n in self.nodes:
            if n.protocol is not None:
                total.update(n.protocol.counters)
        return dict(sorted(total.items()))


# --- output --------------------------------------------------------------------------


def print_table(r: dict[str, Any]) -> None:
    p, b, lk = r["params"], r["bootstrap"], r["lookups"]
    print(f"SporeDHT simulation: {p['nodes']} nodes, seed {p['seed']}, link "
          f"{p['latency_ms']}+{p['jitter_ms']} ms, loss {p['loss']}, "
          f"{p['seeds']} seeds per join")
    print(f"bootstrap: seeds answered {b['seeds_answered_pct']}%, routing table p50 "
          f"{b['table_p50']} (min {b['table_min']}, max {b['table_max']}), admitted p50 "
          f"{b['admitted_p50']} (max {b['admitted_max']}), virtual {b['virtual_s']} s")
    print(f"\nlookups of random ids ({lk['count']}, k={20}, alpha=3):")
    rows = [("rounds (hops) mean", lk["rounds_mean"]),
            ("find_node RPCs p50 / p99", f"{lk['rpcs_p50']:.0f} / {lk['rpcs_p99']:.0f}"),
            ("latency ms p50 / p99 (virtual)", f"{lk['ms_p50']} / {lk['ms_p99']}"),
            ("found exactly the k closest", f"{lk['exact_k_pct']}%"),
            ("recall of the k closest", f"{lk['recall_k_pct']}%"),
            ("found the closest node", f"{lk['closest_found_pct']}%"),
            ("found the 3 closest (replica set)", f"{lk['closest3_found_pct']}%")]
    for name, val in rows:
        print(f"  {name:<36} {val}")
    total = lk["count"]
    print("  rounds distribution: " + ", ".join(
        f"{h}: {100 * c / total:.1f}%" for h, c in lk["rounds"].items()))
    pu, kill = r["puts"], r["kill"]
    print(f"\nputs: {pu['count']}, quorum reached {pu['ok_pct']}%, acks {pu['acks']}, "
          f"ms p50/p99 {pu['ms_p50']}/{pu['ms_p99']}")
    print(f"killed {kill['killed']} of {p['nodes']} nodes ({100 * p['kill']:.0f}%); "
          f"values whose author survived: {kill['values_with_live_author']}")
    print(f"\n{'phase':<28}{'get ok':>14}{'ms p50':>9}{'ms p99':>9}{'ms max':>9}"
          f"   live holders per value 0/1/2/3/4+")
    phases = [("after put (all alive)", "gets_before_kill", "holders_after_put"),
              ("after kill, no republish", "gets_no_republish", "holders_after_kill"),
              ("  (after those gets' repair)", None, "holders_after_gets"),
              ("after 1 republish round", "gets_after_republish", "holders_after_republish")]
    for name, gk, hk in phases:
        h = "/".join(str(v) for v in r[hk].values())
        if gk is None:
            print(f"{name:<28}{'':>14}{'':>9}{'':>9}{'':>9}   {h}")
            continue
        g = r[gk]
        ok = f"{g['ok']}/{g['count']} {g['ok_pct']:.1f}%"
        print(f"{name:<28}{ok:>14}{g['ms_p50']:>9}{g['ms_p99']:>9}{g['ms_max']:>9}   {h}")
    rp = r["republish"]
    print(f"republish: {rp['authors']} surviving authors, {rp['succeeded']}/{rp['values']} "
          f"values re-put")
    w = r["wall_s"]
    print("\nwall time s: " + ", ".join(f"{k} {v}" for k, v in w.items())
          + f"; peak RSS {r['peak_rss_mb']} MB")
    c = r["node_counters"]
    print("counters: " + ", ".join(f"{k} {c[k]}" for k in (
        "admitted", "timeouts", "skipped_dead", "evicted", "repaired", "busy",
        "refused_full", "refused_ip_cap", "handshake_one_way", "handler_errors",
        "task_errors", "contact_id_mismatch") if k in c))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--values", type=int, default=1000)
    ap.add_argument("--value-bytes", type=int, default=200)
    ap.add_argument("--kill", type=float, default=0.3, help="share of nodes removed")
    ap.add_argument("--seeds", type=int, default=3, help="bootstrap peers per joining node")
    ap.add_argument("--join-batch", type=int, default=250, help="nodes joining at once")
    ap.add_argument("--concurrency", type=int, default=64, help="operations in flight")
    ap.add_argument("--latency-ms", type=float, default=2.0, help="one-way link latency")
    ap.add_argument("--jitter-ms", type=float, default=3.0)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        report = runner.run(Sim(args, rng).run())
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
