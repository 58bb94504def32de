"""Gossip convergence: rounds, seconds and bytes, against the epidemic model.

1. In-process simulation (N = 8, 16, 32, 100, 1000): real GossipStores with
   the real validators and the real push-pull `exchange`, over a fake network
   (direct calls, bytes counted). Every store starts converged (DNA and every
   node's peer card); one new signed vote is injected at one node and rounds
   run until every node holds it. Also: the bytes of a round when nothing
   changed, with 0, 1,000 and 10,000 extra memories' votes (N = 16).
2. Real spore processes (N = 8, 16, 32, loopback, gossip every 0.5 s): a
   founder's DNA change and a vote are timed until 99% and 100% of the
   spores hold them, and the gossip counters give the bytes of a quiet round.

Both are compared with the epidemic model converged(x) = 1/(1+(N+1)e^(-1.5x))
(fanout 3) and with the goal: 100% of 32 spores within ceil(log2 N) + 3 rounds.

    .venv/bin/python scripts/bench/gossip.py [--sim-only | --procs-only]
        [--sizes 8,16,32,100,1000] [--seeds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _gossip_sim import (
    REPLY_HEADERS,
    REQUEST_HEADERS,
    converged_swarm,
    goal_rounds,
    model_rounds,
    model_rounds_all,
    spread_one,
)
from _spore import Spore

INTERVAL_S = 0.5
MAX_PROCS = 64  # sizes above this are simulated only
POLL_S = 0.05
QUIET_WINDOW_S = 5.0
MEMORY_COUNTS = (0, 1_000, 10_000)
MEMORY_N = 16
FACT = ("Which tool shows the kernel log?", "journalctl -k shows the kernel ring buffer.")
COUNTERS = ("rounds", "same_rounds", "sync_rounds", "failed_rounds", "bytes_sent",
            "bytes_received")


def _share_count(n: int, share: float) -> int:
    """How many of `n` make `share` of them (99% of fewer than 100 is all)."""
    return math.ceil(share * n - 1e-9)


def _compare(n: int, rounds99: float, rounds100: float) -> dict[str, Any]:
    m99, m100 = model_rounds(n, 0.99), model_rounds_all(n)
    return {"model_rounds_99": m99, "model_rounds_100": m100,
            "ratio_99": rounds99 / m99, "ratio_100": rounds100 / m100,
            "goal_rounds": goal_rounds(n), "goal_met": rounds100 <= goal_rounds(n)}


# --- 1. in-process simulation -------------------------------------------------------------


async def _simulate(n: int, seeds: int, extra: int = 0) -> dict[str, Any]:
    t = time.perf_counter()
    stores = converged_swarm(n, extra)
    rng = random.Random(n * 1_000_003 + extra)
    runs = [await spread_one(stores, rng) for _ in range(seeds)]
    r99 = statistics.fmean(s.rounds_to(0.99) for s in runs)
    r100 = statistics.fmean(s.rounds_to(1.0) for s in runs)
    spreading = [b / n for s in runs for b in s.spreading_bytes]
    quiet = [b / n for s in runs for b in s.quiet_bytes]
    return {"n": n, "memories": extra, "seeds": seeds, "rounds_99": r99, "rounds_100": r100,
            "rounds_100_max": max(s.rounds_to(1.0) for s in runs),
            "bytes_per_node_round_spreading": statistics.fmean(spreading),
            "bytes_per_node_round_quiet": statistics.fmean(quiet),
            "quiet_bytes_all_equal": len(set(quiet)) == 1,
            "share_by_round": [statistics.fmean(s.fractions[r] if r < len(s.fractions) else 1.0
                                                for s in runs)
                               for r in range(max(len(s.fractions) for s in runs))],
            "seconds": time.perf_counter() - t, **_compare(n, r99, r100),
            "goal_met": max(s.rounds_to(1.0) for s in runs) <= goal_rounds(n)}


def run_sim(sizes: list[int], seeds: int) -> dict[str, Any]:
    rows = [asyncio.run(_simulate(n, seeds)) for n in sizes]
    by_memories = [asyncio.run(_simulate(MEMORY_N, 2, m)) for m in MEMORY_COUNTS]
    return {"rows": rows, "memories": by_memories}


# --- 2. real processes --------------------------------------------------------------------


def _start(n: int, tmp: Path, spores: list[Spore]) -> None:
    """N spores of one swarm (the founder's dna.bin copied), seeded by the first;
    appended to `spores` as they are made, so the caller can stop them all."""
    loopback = {"SPORE_GOSSIP_INTERVAL": str(INTERVAL_S), "SPORE_MAX_CONTACTS_PER_IP": "256",
                "SPORE_DHT_RATE": "100000"}
    # An open swarm with free identities: as before membership, every voice weighs 1.
    spores.append(Spore(tmp / "s0", env=loopback).found())
    spores[0].__enter__()
    dna = (tmp / "s0" / "dna.bin").read_bytes()
    for i in range(1, n):
        state = tmp / f"s{i}"
        state.mkdir(parents=True)
        (state / "dna.bin").write_bytes(dna)
        spores.append(Spore(state, env={**loopback,
                                        "SPORE_PEERS": f"127.0.0.1:{spores[0].dht_port}"}))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(Spore.__enter__, spores[1:]))


def _stop(spores: list[Spore]) -> None:
    for s in spores:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.terminate()
    for s in spores:
        if s.proc is None:
            continue
        try:
            s.proc.wait(30)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
        if s.conn is not None:
            s.conn.close()


def _times_until(spores: list[Spore], holds: Callable[[Spore], bool], t0: float,
                 timeout_s: float = 60.0) -> list[float]:
    """Seconds from t0 until each spore's `holds` is true, each polled in parallel."""
    def poll(s: Spore) -> float:
        while True:
            if holds(s):
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout_s:
                return math.inf
            time.sleep(POLL_S)
    with ThreadPoolExecutor(len(spores)) as pool:
        return list(pool.map(poll, spores))


def _one_root(spores: list[Spore], timeout_s: float = 120.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        with ThreadPoolExecutor(len(spores)) as pool:
            roots = set(pool.map(lambda s: s.call("GET", "/v1/gossip")["root"], spores))
        if len(roots) == 1:
            return time.perf_counter() - t0
        time.sleep(0.2)
    raise RuntimeError(f"no common gossip root within {timeout_s:.0f} s")


def _spreading(n: int, times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    s99, s100 = ordered[_share_count(n, 0.99) - 1], ordered[-1]
    r99, r100 = s99 / INTERVAL_S, s100 / INTERVAL_S
    return {"seconds_99": s99, "seconds_100": s100, "rounds_99": r99, "rounds_100": r100,
            **_compare(n, r99, r100)}


def _dna_change(spores: list[Spore]) -> dict[str, Any]:
    founder = spores[0]
    threshold = founder.call("GET", "/v1/dna")["division_threshold"]
    t0 = time.perf_counter()
    version = founder.call("POST", "/v1/dna",
                           {"set": {"division_threshold": threshold + 1}})["version"]
    times = _times_until(spores, lambda s: s.call("GET", "/v1/dna")["version"] >= version, t0)
    return _spreading(len(spores), times)


def _vote(spores: list[Spore]) -> dict[str, Any]:
    teacher, asker = spores[1], spores[2]
    teacher.call("POST", "/v1/teach", {"text": FACT[1], "question": FACT[0]})
    deadline = time.monotonic() + 60
    while True:  # the fact is published to the DHT behind the teach
        got = asker.call("POST", "/v1/ask", {"question": FACT[0], "top": 1})
        if got["answer"] == FACT[1]:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"spore 2 never found the fact taught on spore 1: {got}")
        time.sleep(0.2)
    t0 = time.perf_counter()
    memory = asker.call("POST", "/v1/rate", {"answer_id": got["answer_id"],
                                             "vote": "up"})["memory_id"]
    times = _times_until(spores,
                         lambda s: s.call("GET", f"/v1/votes/{memory}")["voters"] == 1, t0)
    return _spreading(len(spores), times)


def _counters(spores: list[Spore]) -> list[dict[str, int]]:
    with ThreadPoolExecutor(len(spores)) as pool:
        return list(pool.map(lambda s: s.call("GET", "/v1/gossip")["counters"], spores))


def _quiet(spores: list[Spore]) -> dict[str, Any]:
    """Gossip traffic over a window in which nothing changes (one root)."""
    _one_root(spores)
    before, t0 = _counters(spores), time.perf_counter()
    time.sleep(QUIET_WINDOW_S)  # a measuring window, not a wait for a condition
    after, window = _counters(spores), time.perf_counter() - t0
    delta = {k: sum(a.get(k, 0) - b.get(k, 0) for a, b in zip(after, before, strict=True))
             for k in COUNTERS}
    rounds = max(delta["rounds"], 1)
    return {"window_s": window, **delta,
            "rounds_per_spore_s": delta["rounds"] / len(spores) / window,
            "bytes_sent_per_round": delta["bytes_sent"] / rounds,
            "bytes_both_ways_per_round": (delta["bytes_sent"] + delta["bytes_received"])
            / rounds}


def _procs(n: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="gossip-bench-"))
    spores: list[Spore] = []
    t = time.perf_counter()
    try:
        _start(n, tmp, spores)
        started = time.perf_counter() - t
        joined = _one_root(spores)
        dna, vote = _dna_change(spores), _vote(spores)
        quiet = _quiet(spores)
    finally:
        _stop(spores)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"n": n, "start_s": started, "join_s": joined, "dna": dna, "vote": vote,
            "quiet": quiet, "seconds": time.perf_counter() - t}


def run_procs(sizes: list[int]) -> list[dict[str, Any]]:
    return [_procs(n) for n in sizes if 3 <= n <= MAX_PROCS]


# --- report ------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_sim(sim: dict[str, Any]) -> None:
    print("In-process simulation: real GossipStores and exchange(), fake network. A round: "
          "every node, in random order,\n  one push-pull exchange with a uniformly random "
          "other node. Bytes: bodies both ways + HTTP headers\n  (assumed "
          f"{REQUEST_HEADERS} B per request, {REPLY_HEADERS} B per reply, as measured with "
          "aiohttp; TCP/IP not counted).")
    print(f"{'N':>5} {'seeds':>5} | {'99%':>5} {'model':>5} {'ratio':>5} | {'100%':>5} "
          f"{'model':>5} {'ratio':>5} {'max':>4} | {'goal':>4} {'':6} | "
          f"{'B/node/round':>12} {'quiet':>6} {'s':>5}")
    for r in sim["rows"]:
        print(f"{r['n']:>5} {r['seeds']:>5} | {r['rounds_99']:>5.1f} {r['model_rounds_99']:>5.1f}"
              f" {r['ratio_99']:>5.2f} | {r['rounds_100']:>5.1f} {r['model_rounds_100']:>5.1f}"
              f" {r['ratio_100']:>5.2f} {r['rounds_100_max']:>4} | {r['goal_rounds']:>4} "
              f"{_met(r['rounds_100_max'] <= r['goal_rounds']):6} | "
              f"{r['bytes_per_node_round_spreading']:>12.0f} "
              f"{r['bytes_per_node_round_quiet']:>6.0f} {r['seconds']:>5.1f}")
    print("  (99% and 100% are rounds averaged over the seeds; 'max' is the slowest seed, "
          "the one the goal is checked on;\n   'B/node/round' is while the item spreads, "
          "'quiet' once all hold it; the model's '100%' is N-0.5 of N)")
    mem = sim["memories"]
    quiet = [round(r["bytes_per_node_round_quiet"]) for r in mem]
    print(f"Per-round traffic vs memories held (N = {MEMORY_N}, the same votes on every node):")
    for r, q in zip(mem, quiet, strict=True):
        print(f"  M = {r['memories']:>6,}: {q:>5} B/node/round when nothing changed, "
              f"{r['bytes_per_node_round_spreading']:>5.0f} while one new item spreads")
    print(f"  nothing changed → independent of the number of memories: "
          f"{_met(len(set(quiet)) == 1)}")


def print_procs(rows: list[dict[str, Any]]) -> None:
    print(f"\nReal spore processes on loopback, gossip interval {INTERVAL_S} s; rounds = seconds"
          f" / {INTERVAL_S}; each spore polled every {POLL_S * 1000:.0f} ms\n  "
          "(for N < 100, 99% of the spores is all of them).")
    print(f"{'N':>3} {'change':7} | {'99% s':>6} {'100% s':>6} | {'r99':>4} {'model':>5} "
          f"{'ratio':>5} | {'r100':>4} {'model':>5} {'ratio':>5} | {'goal':>4} {'':6} | "
          f"{'start s':>7} {'join s':>6}")
    for r in rows:
        for what in ("dna", "vote"):
            c = r[what]
            extra = f" | {r['start_s']:>7.1f} {r['join_s']:>6.1f}" if what == "dna" else ""
            line = (f"{r['n']:>3} {what:7} | {c['seconds_99']:>6.2f} {c['seconds_100']:>6.2f} | "
                    f"{c['rounds_99']:>4.1f} {c['model_rounds_99']:>5.1f} {c['ratio_99']:>5.2f} | "
                    f"{c['rounds_100']:>4.1f} {c['model_rounds_100']:>5.1f} "
                    f"{c['ratio_100']:>5.2f} | {c['goal_rounds']:>4} "
                    f"{_met(c['goal_met']):6}{extra}")
            print(line.rstrip())
    print("  quiet window (one root; counters of GET /v1/gossip: bodies + measured headers, "
          "576 B/request, 375 B/reply;\n  sent = the requests a spore makes and the replies it "
          "serves):")
    print(f"{'N':>3} {'window s':>8} {'rounds/spore/s':>14} {'sync rounds':>11} "
          f"{'failed':>6} | {'B sent/round':>12} {'B both ways/round':>17}")
    for r in rows:
        q = r["quiet"]
        print(f"{r['n']:>3} {q['window_s']:>8.1f} {q['rounds_per_spore_s']:>14.2f} "
              f"{q['sync_rounds']:>11} {q['failed_rounds']:>6} | "
              f"{q['bytes_sent_per_round']:>12.0f} {q['bytes_both_ways_per_round']:>17.0f}")


def print_goal(sim: dict[str, Any] | None, procs: list[dict[str, Any]]) -> None:
    n, goal = 32, goal_rounds(32)
    parts = []
    for r in (sim or {}).get("rows", []):
        if r["n"] == n:
            parts.append(f"simulation {r['rounds_100']:.1f} rounds (slowest seed "
                         f"{r['rounds_100_max']}): {_met(r['rounds_100_max'] <= goal)}")
    for r in procs:
        if r["n"] == n:
            for what in ("dna", "vote"):
                c = r[what]
                parts.append(f"processes {what} {c['rounds_100']:.1f} rounds "
                             f"({c['seconds_100']:.2f} s): {_met(c['goal_met'])}")
    print(f"\nGoal: 100% of {n} spores within ceil(log2 {n}) + 3 = {goal} rounds — "
          + ("; ".join(parts) if parts else "N = 32 not run"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim-only", action="store_true")
    ap.add_argument("--procs-only", action="store_true")
    ap.add_argument("--sizes", default="8,16,32,100,1000",
                    help=f"comma-separated N; processes run those <= {MAX_PROCS}")
    ap.add_argument("--seeds", type=int, default=5, help="simulation runs per N")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if any(n < 3 for n in sizes):
        ap.error("every size must be at least 3")
    t = time.perf_counter()
    sim = None if args.procs_only else run_sim(sizes, args.seeds)
    procs = [] if args.sim_only else run_procs(sizes)
    wall = time.perf_counter() - t
    if args.json:
        print(json.dumps({"sim": sim, "procs": procs, "wall_s": wall}, indent=2))
        return
    if sim is not None:
        print_sim(sim)
    if procs:
        print_procs(procs)
    print_goal(sim, procs)
    print(f"wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
