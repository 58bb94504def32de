"""The index's dequantising blocks: the exact scan (every spore of up to
`rerank` memories) timed with today's blocks beside 16,384-row blocks, the
size before, in the same run and the same process (glibc's mmap threshold
fixed as the daemon fixes it: agents.encoder).

    PYTHONPATH=. .venv/bin/python scripts/bench/index_scan.py [--sizes 300 1000 100000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import agents.encoder as encoder_mod
import dht.index as index_mod
from dht import compact
from dht.keys import LshParams

BEFORE = 16384


def p50_us(index: index_mod.LocalIndex, q: np.ndarray, block: int, runs: int) -> float:
    index_mod._SCAN_BLOCK = block
    times = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        index.exact(q, 24)
        times.append(time.perf_counter_ns() - t)
    return float(np.percentile(times, 50)) / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 100000])
    args = ap.parse_args()
    encoder_mod._release_large_blocks()  # as a daemon that loaded its encoder
    now = index_mod._SCAN_BLOCK
    rng = np.random.default_rng(1)
    print(f"exact scan p50, µs: blocks of {now} rows (now) against {BEFORE} (before)")
    for n in args.sizes:
        x = rng.standard_normal((n, 384)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        codes, scales = compact.to_int8(x)
        index = index_mod.LocalIndex(LshParams(tables=4, bits=10, probes=2,
                                               seed=bytes(range(16))), 384)
        index.add_compact(np.arange(n, dtype=np.int64), codes, scales)
        runs = 300 if n <= 10_000 else 20
        after, before = p50_us(index, x[0], now, runs), p50_us(index, x[0], BEFORE, runs)
        print(f"  {n:>7} memories: {after:9.1f} (now)  {before:9.1f} (before)  "
              f"{before / after:5.1f}x")
    index_mod._SCAN_BLOCK = now


if __name__ == "__main__":
    main()
