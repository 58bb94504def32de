"""Real data: the Debian FAQ. Ingest the answers, ask every question.

Each FAQ section whose heading is a question gives one (question, answer)
pair; the answers are chunked as `spore ingest` chunks them and taught to a
real spore; then every question is asked over HTTP. A hit is a source chunk
from the question's own section. Reported beside a TF-IDF baseline over the
same chunks, measured in the same run, and with a reliability table of the
confidence the spore reports (and, with --calibrate, a logistic fit of it).

    apt-get install debian-faq
    .venv/bin/python scripts/bench/faq.py [--json] [--calibrate]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from _spore import Spore, faq_pairs

from cli.documents import chunk_text

WORD = re.compile(r"[a-z0-9]+")


def tfidf_rank(chunks: list[str], questions: list[str]) -> list[list[int]]:
    """Classic TF-IDF (log tf, idf, cosine) — the lexical baseline."""
    docs = [Counter(WORD.findall(c.lower())) for c in chunks]
    df = Counter(w for d in docs for w in d)
    idf = {w: math.log(len(docs) / n) for w, n in df.items()}
    vocab = {w: i for i, w in enumerate(idf)}

    def vec(words: Counter[str]) -> np.ndarray:
        v = np.zeros(len(vocab), np.float32)
        for w, n in words.items():
            if w in vocab:
                v[vocab[w]] = (1 + math.log(n)) * idf[w]
        return v / (np.linalg.norm(v) or 1.0)

    matrix = np.stack([vec(d) for d in docs])
    return [list(np.argsort(-(matrix @ vec(Counter(WORD.findall(q.lower())))))[:5])
            for q in questions]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--calibrate", action="store_true")
    args = ap.parse_args()
    pairs = faq_pairs()
    chunks = [(sec, c) for sec, _, a in pairs for c in chunk_text(a)]
    questions = [(sec, q) for sec, q, _ in pairs]
    with tempfile.TemporaryDirectory() as tmp, Spore(Path(tmp)) as spore:
        t = time.perf_counter()
        for i in range(0, len(chunks), 32):
            spore.call("POST", "/v1/ingest", {"chunks": [
                {"text": c, "origin": f"{sec}@{i + k}"} for k, (sec, c) in
                enumerate(chunks[i:i + 32])]})
        ingest_s = time.perf_counter() - t
        answers = [spore.call("POST", "/v1/ask", {"question": q, "top": 5})
                   for _, q in questions]
    hits1 = hits5 = 0
    cal = []
    for (sec, _), ans in zip(questions, answers, strict=True):
        secs = [s["origin"].split("@")[0] for s in ans["sources"]]
        hits1 += secs[:1] == [sec]
        hits5 += sec in secs
        scores = [s["score"] for s in ans["sources"]]
        cal.append((ans["confidence"], scores[0], scores[0] - scores[1], secs[:1] == [sec]))
    lex = tfidf_rank([c for _, c in chunks], [q for _, q in questions])
    lex1 = sum(chunks[r[0]][0] == sec for (sec, _), r in zip(questions, lex, strict=True))
    lex5 = sum(sec in {chunks[i][0] for i in r} for (sec, _), r in zip(questions, lex,
                                                                          strict=True))
    n = len(questions)
    result = {"questions": n, "chunks": len(chunks), "sections": len(pairs),
              "spore_top1": hits1 / n, "spore_top5": hits5 / n,
              "tfidf_top1": lex1 / n, "tfidf_top5": lex5 / n,
              "ingest_chunks_per_s": len(chunks) / ingest_s,
              "reliability": reliability(cal)}
    if args.calibrate:
        result["calibration"] = fit(cal)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Debian FAQ: {n} questions, {len(chunks)} answer chunks")
    print(f"{'':8} {'top-1':>7} {'top-5':>7}")
    print(f"{'spore':8} {hits1 / n:>7.1%} {hits5 / n:>7.1%}")
    print(f"{'TF-IDF':8} {lex1 / n:>7.1%} {lex5 / n:>7.1%}")
    print("confidence reliability (bin: asks, share right):")
    for row in result["reliability"]:
        print(f"  {row['bin']}: {row['asks']:4d} asks, {row['right']:.0%} right")
    if args.calibrate:
        print("logistic fit:", result["calibration"])


def reliability(cal: list[tuple[float, float, float, bool]]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for lo in (0.0, 0.2, 0.4, 0.6, 0.8):
        inside = [ok for c, _, _, ok in cal if lo <= c < lo + 0.2 or (lo == 0.8 and c == 1)]
        if inside:
            out.append({"bin": f"{lo:.1f}-{lo + 0.2:.1f}", "asks": len(inside),
                        "right": sum(inside) / len(inside)})
    return out


def fit(cal: list[tuple[float, float, float, bool]]) -> dict[str, float]:
    """Logistic regression of rightness on (top score, margin), by gradient descent."""
    x = np.array([[1.0, top, margin] for _, top, margin, _ in cal])
    y = np.array([float(ok) for *_, ok in cal])
    w = np.zeros(3)
    for _ in range(20_000):
        p = 1 / (1 + np.exp(-(x @ w)))
        w -= 0.5 * (x.T @ (p - y) / len(y) + 1e-3 * w * np.array([0, 1, 1]))
    p = 1 / (1 + np.exp(-(x @ w)))
    brier = float(np.mean((p - y) ** 2))
    return {"bias": round(float(w[0]), 2), "top": round(float(w[1]), 2),
            "margin": round(float(w[2]), 2), "brier": round(brier, 4),
            "brier_constant": round(float(np.mean((y.mean() - y) ** 2)), 4)}


if __name__ == "__main__":
    main()
