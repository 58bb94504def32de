"""End-to-end ask in a loopback swarm of real spore processes.

N spores (default 32) join one swarm; the Debian FAQ answers are taught,
spread over all spores but one — the *asker*, which holds none of them —
and every FAQ question is asked from the asker over HTTP. Reported beside
the baseline measured in the same run: a single spore holding all the same
answers, asked the same questions. Goal: swarm ask p50 <= 3 x single p50.
Also: top-1/top-5 accuracy from the asker (the swarm must find what a single
spore finds), and the DHT counters.

    .venv/bin/python scripts/bench/swarm.py [--spores 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _spore import Spore, faq_pairs, percentile

from cli.documents import chunk_text


def _ask_all(spore: Spore, questions: list[tuple[str, str]]) -> tuple[list[float], float, float]:
    times, hit1, hit5 = [], 0, 0
    for q, _ in questions[:10]:
        spore.call("POST", "/v1/ask", {"question": q, "top": 5})
    for q, sec in questions:
        t = time.perf_counter()
        got = spore.call("POST", "/v1/ask", {"question": q, "top": 5})
        times.append((time.perf_counter() - t) * 1000)
        secs = [s["origin"].split("@")[0] for s in got["sources"]]
        hit1 += secs[:1] == [sec]
        hit5 += sec in secs
    return times, hit1 / len(questions), hit5 / len(questions)


def _teach(spore: Spore, chunks: list[tuple[str, str]]) -> None:
    for i in range(0, len(chunks), 32):
        spore.call("POST", "/v1/ingest", {"chunks": [
            {"text": c, "origin": f"{sec}@{i + k}"} for k, (sec, c) in
            enumerate(chunks[i:i + 32])]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spores", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pairs = faq_pairs()
    chunks = [(sec, c) for sec, _, a in pairs for c in chunk_text(a)]
    questions = [(q, sec) for sec, q, _ in pairs]
    tmp = Path(tempfile.mkdtemp())
    try:
        with Spore(tmp / "single") as single:
            _teach(single, chunks)
            s_times, s1, s5 = _ask_all(single, questions)
        spores: list[Spore] = []
        # Every spore is on 127.0.0.1: one source IP for the per-IP limits.
        loopback = {"SPORE_MAX_CONTACTS_PER_IP": "256", "SPORE_DHT_RATE": "100000"}
        # An open swarm with free identities: as before membership, every voice weighs 1.
        first = Spore(tmp / "s0", env=loopback).found()
        spores.append(first.__enter__())
        dna = (tmp / "s0" / "dna.bin").read_bytes()
        for i in range(1, args.spores):
            state = tmp / f"s{i}"
            state.mkdir(parents=True)
            (state / "dna.bin").write_bytes(dna)
            s = Spore(state, env={**loopback, "SPORE_PEERS": f"127.0.0.1:{first.dht_port}"})
            spores.append(s.__enter__())
        try:
            t = time.perf_counter()
            for i, chunk in enumerate(chunks):
                _teach(spores[1 + i % (len(spores) - 1)], [chunk])
            # publishing runs behind each teach: wait until the asker sees them
            asker = spores[0]
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                published = sum(s.call("GET", "/v1/status")["dht"]["counters"]["published"]
                                for s in spores[1:])
                if published >= len(chunks) * 9:
                    break
                time.sleep(1)
            publish_s = time.perf_counter() - t
            w_times, w1, w5 = _ask_all(asker, questions)
            status = asker.call("GET", "/v1/status")
        finally:
            for s in spores:
                s.__exit__()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "spores": args.spores, "memories": len(chunks), "questions": len(questions),
        "single_p50_ms": percentile(s_times, 50), "single_p99_ms": percentile(s_times, 99),
        "swarm_p50_ms": percentile(w_times, 50), "swarm_p99_ms": percentile(w_times, 99),
        "ratio_p50": percentile(w_times, 50) / percentile(s_times, 50),
        "single_top1": s1, "single_top5": s5, "swarm_top1": w1, "swarm_top5": w5,
        "publish_s": publish_s, "asker_contacts": status["dht"]["contacts"],
        "asker_counters": status["dht"]["counters"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.spores} spores, {len(chunks)} FAQ memories, {len(questions)} questions; "
          "the asker holds none of the answers")
    print(f"{'':14} {'p50 ms':>8} {'p99 ms':>8} {'top-1':>7} {'top-5':>7}")
    print(f"{'single spore':14} {result['single_p50_ms']:>8.2f} {result['single_p99_ms']:>8.2f}"
          f" {s1:>7.1%} {s5:>7.1%}")
    print(f"{'swarm asker':14} {result['swarm_p50_ms']:>8.2f} {result['swarm_p99_ms']:>8.2f}"
          f" {w1:>7.1%} {w5:>7.1%}")
    print(f"ratio swarm/single p50: {result['ratio_p50']:.2f} (goal <= 3); "
          f"publishing took {publish_s:.0f} s")


if __name__ == "__main__":
    main()
