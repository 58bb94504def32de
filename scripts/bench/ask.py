"""Single-spore ask latency at 1,000 and 100,000 memories, beside the encoder.

For each size, a state directory is filled with real corpus chunks (signed
memory records, as a teach would store them), a real `spore node run`
process is started, and real FAQ questions are asked over HTTP (keep-alive).
The baseline, measured in the same run on the same questions, is the encoder
alone (one thread, as the daemon uses). Goal: ask p50 <= 2 x encoder p50.

    .venv/bin/python scripts/bench/ask.py [--sizes 1000 100000] [--queries 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _spore import Spore, faq_pairs, percentile
from corpus import load_corpus

from agents.encoder import load_encoder
from dht import compact
from p2pnode.config import load_config
from p2pnode.daemon import prepare_state
from p2pnode.node import Spore as SporeNode
from p2pnode.records import make_memory
from p2pnode.storage import DB_FILE, Storage


def fill(state: Path, texts: list[str], vectors: np.ndarray) -> None:
    cfg = load_config({"SPORE_STATE_DIR": str(state), "SPORE_CONFIG_DIR": str(state / "c")})
    identity, dna, _ = prepare_state(cfg)
    codes, scales = compact.to_int8(vectors)
    db = Storage(state / DB_FILE)
    batch = []
    for i, (text, vec) in enumerate(zip(texts, vectors, strict=True)):
        rec = make_memory(identity, question="", answer=text, embedding=vec, created_ms=i,
                          origin=f"corpus#{i}", dna_hash=dna.hash)
        batch.append((rec, codes[i].tobytes(), float(scales[i])))
        if len(batch) == 5000:
            db.add_memories(batch)
            batch = []
    if batch:
        db.add_memories(batch)
    db.close()


def encoder_p50(questions: list[str]) -> tuple[float, float]:
    enc = load_encoder(None, 1)
    for q in questions[:20]:
        enc.embed([q])
    times = []
    for q in questions:
        t = time.perf_counter()
        enc.embed([q])
        times.append((time.perf_counter() - t) * 1000)
    return percentile(times, 50), percentile(times, 99)


def measure(n: int, questions: list[str]) -> dict[str, float]:
    texts, vectors = load_corpus(100_000 if n > 1000 else 1000)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        t = time.perf_counter()
        fill(state, texts[:n], vectors[:n])
        fill_s = time.perf_counter() - t
        with Spore(state) as spore:
            for q in questions[:20]:
                spore.call("POST", "/v1/ask", {"question": q})
            times = []
            for q in questions:
                t = time.perf_counter()
                spore.call("POST", "/v1/ask", {"question": q})
                times.append((time.perf_counter() - t) * 1000)
            status = spore.call("GET", "/v1/status")
            rss, startup = spore.rss_mb, spore.startup_s
        inproc = asyncio.run(in_process(state, questions))
        return {"memories": status["memories"], "ask_p50_ms": percentile(times, 50),
                "ask_p99_ms": percentile(times, 99), "rss_mb": rss,
                "startup_s": startup, "fill_s": fill_s,
                "inproc_p50_ms": percentile(inproc, 50), "inproc_p99_ms": percentile(inproc, 99)}


async def in_process(state: Path, questions: list[str]) -> list[float]:
    """The same asks without HTTP: the spore's own pipeline (threads included)."""
    cfg = load_config({"SPORE_STATE_DIR": str(state), "SPORE_CONFIG_DIR": str(state / "c")})
    identity, dna, _ = prepare_state(cfg)
    storage = Storage(state / DB_FILE)
    spore = SporeNode(identity=identity, dna=dna, storage=storage,
                      encoder=load_encoder(None, 1), max_text_bytes=65536)
    await spore.load()
    for q in questions[:20]:
        await spore.ask(q)
    times = []
    for q in questions:
        t = time.perf_counter()
        await spore.ask(q)
        times.append((time.perf_counter() - t) * 1000)
    spore.close()
    storage.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pool = [q for _, q, _ in faq_pairs()]
    questions = [pool[i % len(pool)] for i in range(args.queries)]
    rows = [measure(n, questions) for n in args.sizes]
    enc50, enc99 = encoder_p50(questions)
    for r in rows:
        r.update(encoder_p50_ms=enc50, encoder_p99_ms=enc99, ratio=r["ask_p50_ms"] / enc50,
                 inproc_ratio=r["inproc_p50_ms"] / enc50)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'memories':>9} {'ask p50':>8} {'ask p99':>8} {'enc p50':>8} {'enc p99':>8} "
          f"{'ratio':>6} {'no-HTTP p50':>11} {'ratio':>6} {'RSS MB':>7} {'start s':>7}")
    for r in rows:
        print(f"{r['memories']:>9} {r['ask_p50_ms']:>8.2f} {r['ask_p99_ms']:>8.2f} "
              f"{r['encoder_p50_ms']:>8.2f} {r['encoder_p99_ms']:>8.2f} {r['ratio']:>6.2f} "
              f"{r['inproc_p50_ms']:>11.2f} {r['inproc_ratio']:>6.2f} "
              f"{r['rss_mb']:>7.0f} {r['startup_s']:>7.2f}")
    print("ratio = ask p50 / encoder p50 (goal <= 2.0); ask over HTTP (keep-alive) to a real "
          f"daemon, and in-process without HTTP; {len(questions)} Debian FAQ questions")


if __name__ == "__main__":
    main()
