"""Benchmark the sentence encoder against the original int8 model.

For each model, in a fresh process (so that RSS is its own): latency of one
short query (p50/p99 of 200 runs after warm-up), batch-32 throughput on real
sentences, RSS after load and peak RSS. Then the minimum cosine between the
two models' embeddings of ~100 real sentences.

    .venv/bin/python scripts/bench/encoder.py [--json] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents.encoder import load_encoder  # noqa: E402
from agents.model_build import ensure_model, source_model_path  # noqa: E402

QUERY = "How do I install Debian?"
LICENSES = Path("/usr/share/common-licenses")
WARMUP, RUNS, BATCH, BATCH_ROUNDS = 20, 200, 32, 5


def real_sentences(count: int = 100) -> list[str]:
    """Distinct sentences of 40-300 characters from the machine's licence texts."""
    found: dict[str, None] = {}
    for path in sorted(p for p in LICENSES.iterdir() if p.is_file()):
        flat = re.sub(r"\s+", " ", path.read_text(errors="replace"))
        for sentence in re.split(r"(?<=[.!?;])\s+", flat.strip()):
            if 40 <= len(sentence) <= 300:
                found.setdefault(sentence)
            if len(found) >= count:
                return list(found)
    return list(found)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(model: Path, threads: int) -> dict[str, float]:
    """Runs in a child process: the figures for one model."""
    sentences = real_sentences()[:BATCH]
    encoder = load_encoder(model, threads=threads)
    rss_after_load = rss_mb()
    for _ in range(WARMUP):
        encoder.embed([QUERY])
    latencies = []
    for _ in range(RUNS):
        start = time.perf_counter()
        encoder.embed([QUERY])
        latencies.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    for _ in range(BATCH_ROUNDS):
        encoder.embed(sentences, batch_size=BATCH)
    batch_rate = BATCH * BATCH_ROUNDS / (time.perf_counter() - start)
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "query_p50_ms": cuts[49],
        "query_p99_ms": cuts[98],
        "batch32_per_s": batch_rate,
        "rss_after_load_mb": rss_after_load,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure_in_child(model: Path, threads: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", str(model), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def min_cosine(requantised: Path, original: Path) -> dict[str, float]:
    sentences = real_sentences()
    ours = load_encoder(requantised).embed(sentences)
    theirs = load_encoder(original).embed(sentences)
    cosines = np.sum(ours * theirs, axis=1)
    return {"sentences": len(sentences), "min": float(cosines.min()),
            "mean": float(cosines.mean())}


def run(threads: int) -> dict[str, Any]:
    requantised, original = ensure_model(), source_model_path()
    return {
        "threads": threads,
        "requantised": measure_in_child(requantised, threads),
        "original": measure_in_child(original, threads),
        "cosine": min_cosine(requantised, original),
    }


def print_table(result: dict[str, Any]) -> None:
    ours, theirs = result["requantised"], result["original"]
    print(f"encoder benchmark, intra-op threads = {result['threads']}")
    print(f"{'metric':<20}{'re-quantised':>14}{'original':>12}{'rq/orig':>10}")
    for key in ours:
        print(f"{key:<20}{ours[key]:>14.2f}{theirs[key]:>12.2f}{ours[key] / theirs[key]:>10.2f}")
    cosine = result["cosine"]
    print(f"cosine rq vs original on {cosine['sentences']} sentences: "
          f"min {cosine['min']:.4f}, mean {cosine['mean']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.threads)))
        return
    result = run(args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
