"""Single-spore ask latency at 1,000 and 100,000 memories, beside the encoder.

For each size, a state directory is filled with real corpus chunks (signed
memory records, as a teach would store them), a real `spore node run`
process is started, and real FAQ questions are asked over HTTP (keep-alive);
then the same questions are asked in-process, without HTTP (a `Spore` over
the same state: no agents, no swarm, so it leaves out what the daemon adds).
The baseline is the encoder alone (one thread, as the daemon uses) on the
same questions. Goal: ask p50 <= 2 x encoder p50.

On a shared machine single times drift by 2x within minutes, so each size is
measured in `--rounds` rounds over one filled state (filling 100,000 takes
longer than a round), and each round's encoder baseline is measured just
before its asks: every line's ratio compares times taken under the same load
(the 1-minute load average is printed beside it). The HTTP rounds run first,
while the daemon serves; RSS is the daemon's after them.

    .venv/bin/python scripts/bench/ask.py [--sizes 1000 100000] [--queries 300]
        [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _spore import Spore, faq_pairs, percentile
from corpus import load_corpus

from agents.encoder import Encoder, load_encoder
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


def encoder_p50(enc: Encoder, questions: list[str]) -> tuple[float, float]:
    """The baseline: (p50, p99) ms of one encoder call per question, after 20 warm-up calls."""
    for q in questions[:20]:
        enc.embed([q])
    times = []
    for q in questions:
        t = time.perf_counter()
        enc.embed([q])
        times.append((time.perf_counter() - t) * 1000)
    return percentile(times, 50), percentile(times, 99)


def load1() -> float:
    return os.getloadavg()[0]


def measure(n: int, questions: list[str], rounds: int, enc: Encoder) -> list[dict[str, float]]:
    """One row per round: HTTP and in-process p50/p99 with the encoder's, measured
    just before each (the in-process rounds after the daemon stopped)."""
    texts, vectors = load_corpus(100_000 if n > 1000 else 1000)
    rows: list[dict[str, float]] = [{"round": r + 1} for r in range(rounds)]
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        t = time.perf_counter()
        fill(state, texts[:n], vectors[:n])
        fill_s = time.perf_counter() - t
        with Spore(state) as spore:
            for q in questions[:20]:
                spore.call("POST", "/v1/ask", {"question": q})
            for row in rows:
                enc50, enc99 = encoder_p50(enc, questions)
                times = []
                for q in questions:
                    t = time.perf_counter()
                    spore.call("POST", "/v1/ask", {"question": q})
                    times.append((time.perf_counter() - t) * 1000)
                row.update(encoder_p50_ms=enc50, encoder_p99_ms=enc99, load1=load1(),
                           ask_p50_ms=percentile(times, 50), ask_p99_ms=percentile(times, 99),
                           ratio=percentile(times, 50) / enc50)
            status = spore.call("GET", "/v1/status")
            rss, startup = spore.rss_mb, spore.startup_s
        inproc = asyncio.run(in_process(state, questions, rounds, enc))
    for row, (times, enc50) in zip(rows, inproc, strict=True):
        row.update(memories=status["memories"], rss_mb=rss, startup_s=startup, fill_s=fill_s,
                   inproc_encoder_p50_ms=enc50, inproc_p50_ms=percentile(times, 50),
                   inproc_p99_ms=percentile(times, 99),
                   inproc_ratio=percentile(times, 50) / enc50)
    return rows


async def in_process(state: Path, questions: list[str], rounds: int,
                     enc: Encoder) -> list[tuple[list[float], float]]:
    """The same asks without HTTP: the spore's own pipeline (threads included).
    Per round: (the asks' ms, the encoder's p50 just before)."""
    cfg = load_config({"SPORE_STATE_DIR": str(state), "SPORE_CONFIG_DIR": str(state / "c")})
    identity, dna, _ = prepare_state(cfg)
    storage = Storage(state / DB_FILE)
    spore = SporeNode(identity=identity, dna=dna, storage=storage,
                      encoder=load_encoder(None, 1), max_text_bytes=65536)
    await spore.load()
    for q in questions[:20]:
        await spore.ask(q)
    out = []
    for _ in range(rounds):
        enc50, _p99 = encoder_p50(enc, questions)
        times = []
        for q in questions:
            t = time.perf_counter()
            await spore.ask(q)
            times.append((time.perf_counter() - t) * 1000)
        out.append((times, enc50))
    spore.close()
    storage.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    pool = [q for _, q, _ in faq_pairs()]
    questions = [pool[i % len(pool)] for i in range(args.queries)]
    enc = load_encoder(None, 1)
    rows = [row for n in args.sizes for row in measure(n, questions, args.rounds, enc)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'memories':>9} {'round':>5} {'load':>5} {'ask p50':>8} {'ask p99':>8} "
          f"{'enc p50':>8} {'ratio':>6} {'no-HTTP p50':>11} {'enc p50':>8} {'ratio':>6} "
          f"{'RSS MB':>7} {'start s':>7}")
    for r in rows:
        print(f"{r['memories']:>9} {r['round']:>5} {r['load1']:>5.1f} {r['ask_p50_ms']:>8.2f} "
              f"{r['ask_p99_ms']:>8.2f} {r['encoder_p50_ms']:>8.2f} {r['ratio']:>6.2f} "
              f"{r['inproc_p50_ms']:>11.2f} {r['inproc_encoder_p50_ms']:>8.2f} "
              f"{r['inproc_ratio']:>6.2f} {r['rss_mb']:>7.0f} {r['startup_s']:>7.2f}")
    for n in dict.fromkeys(r["memories"] for r in rows):
        mine = [r for r in rows if r["memories"] == n]
        print(f"{n:>9} median of {len(mine)} rounds: ratio "
              f"{statistics.median(r['ratio'] for r in mine):.2f}, without HTTP "
              f"{statistics.median(r['inproc_ratio'] for r in mine):.2f}")
    print("ratio = ask p50 / encoder p50 of the same round (goal <= 2.0); ask over HTTP "
          "(keep-alive) to a real daemon, and in-process without HTTP; "
          f"{len(questions)} Debian FAQ questions")


if __name__ == "__main__":
    main()
