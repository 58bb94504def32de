"""Benchmark the batched agent pool: all agents score all candidates per query.

Three ways to get the same [A, C] scores, measured in the same run on the
same queries, round-robin (one query each in turn, so that other load on the
machine hits all three alike): the pool (one onnxruntime call, weights
stacked along an agent axis), the numpy reference (`reference_scores`), and
a naive loop over one checked onnxruntime session per agent. One thread
everywhere. Goal: 64 agents × 200 candidates in <= 2 ms per query (p50).

    .venv/bin/python scripts/bench/pool.py [--agents 64] [--candidates 200]
                                           [--queries 500] [--json]
"""

from __future__ import annotations

import os

# One core for numpy's BLAS too, so that the three methods compete fairly.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents import guard  # noqa: E402
from agents.genome import DIM, Agent, Weights, mutate, new_agent, to_onnx  # noqa: E402
from agents.pool import Pool, reference_scores  # noqa: E402
from p2pnode.identity import Identity  # noqa: E402

GOAL_MS = 2.0
WARMUP = 30
SIGMA = 0.02

Method = Callable[[np.ndarray, np.ndarray], np.ndarray]


def unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return out


def make_agents(count: int, rng: np.random.Generator) -> list[Agent]:
    """Root agents and their mutated children, as a pool would hold after a while."""
    me = Identity.from_seed(b"bench")
    out: list[Agent] = []
    while len(out) < count:
        root = new_agent(me, Weights.initial(rng), created_ms=len(out))
        child = new_agent(me, mutate(root.weights, SIGMA, rng), created_ms=len(out),
                          parent=root.lineage)
        out.extend([root, child])
    return out[:count]


def naive_loop(agents: list[Agent]) -> Method:
    sessions = [guard.load(to_onnx(a.weights)) for a in agents]

    def scores(q: np.ndarray, cand: np.ndarray) -> np.ndarray:
        feed = {"q": q.reshape(1, DIM)}
        r = np.concatenate([s.run(None, feed)[0] for s in sessions])
        return unit(r) @ cand.T  # type: ignore[no-any-return]

    return scores


def latencies(method: Method, queries: np.ndarray, cand: np.ndarray) -> list[float]:
    ms = []
    for q in queries:
        start = time.perf_counter()
        method(q, cand)
        ms.append((time.perf_counter() - start) * 1000)
    return ms


def timed(methods: dict[str, Method], queries: np.ndarray, cand: np.ndarray
          ) -> dict[str, dict[str, list[float]]]:
    """Each method alone (its weights stay in cache), then round-robin (one
    query each in turn: the others' weights evict its own, as the encoder and
    storage do in a daemon, and background load hits all alike)."""
    warm, rest = queries[:WARMUP], queries[WARMUP:]
    alone: dict[str, list[float]] = {}
    for name, method in methods.items():
        latencies(method, warm, cand)
        alone[name] = latencies(method, rest, cand)
    shared: dict[str, list[float]] = {name: [] for name in methods}
    for q in rest:
        for name, method in methods.items():
            shared[name] += latencies(method, q[None, :], cand)
    return {"alone": alone, "round_robin": shared}


def run(agents_n: int, candidates: int, queries_n: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    agents = make_agents(agents_n, rng)
    cand = unit(rng.standard_normal((candidates, DIM)))
    queries = unit(rng.standard_normal((queries_n + WARMUP, DIM)))
    start = time.perf_counter()
    pool = Pool(agents, threads=1)
    build_ms = (time.perf_counter() - start) * 1000
    # What a rating, a birth or a death costs the pool now: a restack.
    rebuilds = []
    for _ in range(10):
        start = time.perf_counter()
        pool.rebuild(agents)
        rebuilds.append((time.perf_counter() - start) * 1000)
    weights = [a.weights for a in agents]
    methods: dict[str, Method] = {
        "pool (onnx, batched)": pool.scores,
        "numpy reference": lambda q, c: reference_scores(weights, q, c),
        f"naive ({agents_n} sessions)": naive_loop(agents),
    }
    drift = max(float(np.abs(pool.scores(q, cand) - reference_scores(weights, q, cand)).max())
                for q in queries[:20])
    figures = {phase: {name: {"p50_ms": float(np.percentile(v, 50)),
                              "p99_ms": float(np.percentile(v, 99))} for name, v in ms.items()}
               for phase, ms in timed(methods, queries, cand).items()}
    return {"agents": agents_n, "candidates": candidates, "queries": queries_n,
            "pool_build_ms": build_ms, "pool_rebuild_ms": float(np.median(rebuilds)),
            "max_abs_diff_vs_numpy": drift,
            "weights_mb": agents_n * sum(a.nbytes for a in weights[0].arrays()) / 1e6,
            "phases": figures}


def print_table(result: dict[str, Any]) -> None:
    print(f"agent pool benchmark: {result['agents']} agents x {result['candidates']} "
          f"candidates, {result['queries']} queries, 1 thread "
          f"({result['weights_mb']:.1f} MB of weights read per query)")
    phases = result["phases"]
    print(f"{'':<24}{'alone (warm cache)':>30}{'round-robin (shared cache)':>30}")
    print(f"{'method':<24}" + f"{'p50 ms':>10}{'p99 ms':>10}{'/pool':>10}" * 2)
    pools = {phase: next(iter(figs.values()))["p50_ms"] for phase, figs in phases.items()}
    for name in phases["alone"]:
        row = f"{name:<24}"
        for phase, figs in phases.items():
            p50, p99 = figs[name]["p50_ms"], figs[name]["p99_ms"]
            row += f"{p50:>10.3f}{p99:>10.3f}{p50 / pools[phase]:>10.1f}"
        print(row)
    print(f"pool build (once per spore): {result['pool_build_ms']:.0f} ms; rebuild for new "
          f"members or weights (a restack): {result['pool_rebuild_ms']:.1f} ms; "
          f"max |pool - numpy| = {result['max_abs_diff_vs_numpy']:.1e}")
    for phase, p50 in pools.items():
        verdict = "PASS" if p50 <= GOAL_MS else "FAIL"
        print(f"goal: pool p50 <= {GOAL_MS} ms per query, {phase}: {p50:.3f} ms -> {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    result = run(args.agents, args.candidates, args.queries)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
