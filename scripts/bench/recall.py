"""Recall and latency of the local index (dht.index) on real embeddings.

Memories and queries are real corpus chunks (scripts/bench/corpus.py):
1,000 chunks are held out as queries and never indexed; each size indexes a
seeded random sample of the others. For every size it reports

* ``search``: recall@10 against exact float32 cosine over the same memories,
  p50/p99 latency, memories re-ranked per query, bytes of the index's arrays;
* ``exact``: the baseline, a numpy float32 scan (matrix @ q, then top 10),
  p50/p99 in the same run, and the ratio of the two p50s;
* ``buckets``: what the swarm DNA's LSH tables reach, i.e. what a DHT lookup
  of ``bucket_keys`` could find if buckets were unbounded: recall@10 of the
  union of probed buckets, its size, the keys per query and the home-bucket
  occupancy. This is how the DEFAULT_TABLES/BITS/PROBES were chosen.

Everything runs on one core (BLAS threads pinned to 1).

    .venv/bin/python scripts/bench/recall.py [--sizes 1000 100000] [--queries 1000]
        [--lsh TABLES BITS PROBES] [--json]

The first run embeds max(sizes) + queries chunks (see corpus.py; cached).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from corpus import load_corpus  # noqa: E402

from dht.index import LocalIndex  # noqa: E402
from dht.keys import (  # noqa: E402
    DEFAULT_BITS,
    DEFAULT_PROBES,
    DEFAULT_TABLES,
    LshParams,
    hyperplanes,
    probe_plan,
    table_codes_batch,
)

K = 10
SEED = bytes(range(16))


def percentile(samples: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1e3, p))


def exact_top(matrix: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The baseline: float32 cosine against every memory, top k best first."""
    scores = matrix @ q
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


def measure_search(index: LocalIndex, queries: np.ndarray, truth: list[set[int]]
                   ) -> dict[str, float]:
    times, hits, reranked = [], 0, 0
    for q, want in zip(queries, truth, strict=True):
        start = time.perf_counter()
        rows, _ = index.search(q, K)
        times.append(time.perf_counter() - start)
        hits += len(want.intersection(rows.tolist()))
        reranked += index.last_candidates
    return {"recall_at_10": hits / (K * len(queries)), "p50_ms": percentile(times, 50),
            "p99_ms": percentile(times, 99), "mean_reranked": reranked / len(queries)}


def measure_exact(matrix: np.ndarray, queries: np.ndarray
                  ) -> tuple[list[set[int]], dict[str, float]]:
    times, truth = [], []
    for q in queries:
        start = time.perf_counter()
        top = exact_top(matrix, q, K)
        times.append(time.perf_counter() - start)
        truth.append(set(top.tolist()))
    return truth, {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}


def measure_buckets(params: LshParams, matrix: np.ndarray, queries: np.ndarray,
                    truth: list[set[int]]) -> dict[str, float]:
    """Recall of the union of probed buckets (unbounded), as a DHT lookup would see it."""
    planes = hyperplanes(params, matrix.shape[1])
    codes = table_codes_batch(matrix, planes)  # memories are filed under their own codes
    order = np.argsort(codes, axis=0, kind="stable")
    ranked = np.take_along_axis(codes, order, axis=0)
    hits, reached, home = 0, 0, 0
    for q, want in zip(queries, truth, strict=True):
        probes, _ = probe_plan(q, planes, params.probes)
        found: list[np.ndarray] = []
        for t in range(params.tables):
            lo = np.searchsorted(ranked[:, t], probes[t], side="left")
            hi = np.searchsorted(ranked[:, t], probes[t], side="right")
            found.extend(order[a:b, t] for a, b in zip(lo, hi, strict=True))
            home += int(hi[0] - lo[0])
        union = np.unique(np.concatenate(found))
        hits += len(want.intersection(union.tolist()))
        reached += len(union)
    n = len(queries)
    return {"recall_at_10": hits / (K * n), "mean_reached": reached / n,
            "keys_per_query": params.tables * (1 + min(params.probes, 2**params.bits - 1)),
            "entries_per_memory": params.tables,
            "mean_home_bucket": home / (n * params.tables),
            "max_bucket": int(max(np.unique(codes[:, t], return_counts=True)[1].max()
                                  for t in range(params.tables)))}


def run(sizes: list[int], n_queries: int, params: LshParams) -> dict[str, Any]:
    texts, vectors = load_corpus(max(sizes) + n_queries)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(texts))
    queries = vectors[shuffled[:n_queries]]
    pool = shuffled[n_queries:]
    out: dict[str, Any] = {"k": K, "queries": n_queries,
                           "lsh": {"tables": params.tables, "bits": params.bits,
                                   "probes": params.probes},
                           "sizes": []}
    for size in sizes:
        chosen = np.sort(pool[:size])
        matrix = np.ascontiguousarray(vectors[chosen])
        truth, exact = measure_exact(matrix, queries)
        index = LocalIndex(params, matrix.shape[1])
        start = time.perf_counter()
        index.add(np.arange(size), matrix)
        build_s = time.perf_counter() - start
        search = measure_search(index, queries, truth)
        out["sizes"].append({
            "memories": size, "rerank": index.rerank, "sketch_bits": index.planes.shape[0] * 16,
            "index_bytes": index.nbytes, "build_s": build_s, "search": search, "exact": exact,
            "speedup_p50": exact["p50_ms"] / search["p50_ms"],
            "buckets": measure_buckets(params, matrix, queries, truth)})
    return out


def show(result: dict[str, Any]) -> None:
    lsh = result["lsh"]
    print(f"DNA LSH: tables={lsh['tables']} bits={lsh['bits']} probes={lsh['probes']}; "
          f"k={result['k']}, {result['queries']} held-out chunks as queries, one core")
    for r in result["sizes"]:
        s, e, b = r["search"], r["exact"], r["buckets"]
        print(f"\n{r['memories']:,} memories (sketch {r['sketch_bits']} bits, "
              f"rerank {r['rerank']}; index {r['index_bytes'] / 1e6:.1f} MB, "
              f"built in {r['build_s']:.2f} s)")
        print(f"  search   recall@10 {s['recall_at_10']:.3f}  p50 {s['p50_ms']:.3f} ms  "
              f"p99 {s['p99_ms']:.3f} ms  re-ranked {s['mean_reranked']:.0f}")
        print(f"  exact    float32 numpy scan  p50 {e['p50_ms']:.3f} ms  "
              f"p99 {e['p99_ms']:.3f} ms  (p50 exact/search: {r['speedup_p50']:.1f}x)")
        print(f"  buckets  recall@10 {b['recall_at_10']:.3f} of the probed union "
              f"({b['mean_reached']:.0f} memories, {b['keys_per_query']} keys/query, "
              f"{b['entries_per_memory']} entries/memory, home bucket "
              f"{b['mean_home_bucket']:.1f} mean, {b['max_bucket']} max)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--lsh", type=int, nargs=3, metavar=("TABLES", "BITS", "PROBES"),
                        default=[DEFAULT_TABLES, DEFAULT_BITS, DEFAULT_PROBES])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    tables, bits, probes = args.lsh
    params = LshParams(tables, bits, probes, SEED)
    result = run(args.sizes, args.queries, params)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)


if __name__ == "__main__":
    main()
