"""The local index's search at 100,000 memories, beside variants that were
tried to make it cheaper and not kept (README, "where an ask's time goes").

Memories are 99,000 real corpus chunks (scripts/bench/corpus.py, cached);
queries are the 120 Debian FAQ questions embedded by their words, as an ask
embeds them, and 1,000 held-out chunks. Each search is timed *cold*: an
encoder call on its question runs just before it, as in an ask (the call
pushes the index's 4.8 MB of sketches out of cache), and *warm* (the same
search again right after). The baseline is `dht.index.LocalIndex` as shipped, measured
in the same run; ratios are the figures to trust on a shared machine.

* ``sketch 256`` / ``rerank 600``: fewer sketch bits, fewer rows reranked
  (recall@10 against exact float cosine, FAQ questions and chunks).
* Hamming scan variants (their distances checked equal to the index's):
  ``two-stage`` (2 words over all rows, the other 4 over the 6,000 nearest),
  ``blocks`` (all words for 16,384 rows at a time), ``two threads`` (each
  half of the rows on its own thread).

    .venv/bin/python scripts/bench/index_variants.py [--reps 2]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402
from _spore import faq_pairs  # noqa: E402
from corpus import load_corpus  # noqa: E402

from agents.encoder import load_encoder  # noqa: E402
from dht.index import LocalIndex, _smallest, sketches  # noqa: E402
from dht.keys import LshParams  # noqa: E402
from p2pnode.regions import question_text  # noqa: E402

PARAMS = LshParams(8, 6, 8, b"index-variants/1")
K = 10
BLOCK, KEEP_FIRST = 16_384, 6_000


def scans(idx: LocalIndex) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The positions of the ~`rerank` rows nearest a query by Hamming distance
    (what the index reranks), three ways."""
    n, words, sk = len(idx), idx.planes.shape[0] * 16 // 64, idx._sketch[:, :len(idx)]
    x, p, g = (np.empty(n, np.uint64), np.empty(n, np.uint8), np.empty(n, np.uint8))
    dist = np.empty(n, np.uint16)

    def part(mine: np.ndarray, lo: int, hi: int) -> None:
        m = hi - lo
        for w in range(words):
            np.bitwise_xor(sk[w, lo:hi], mine[w], out=x[lo:lo + m])
            np.bitwise_count(x[lo:lo + m], out=p[lo:lo + m])
            if w == 0:
                np.copyto(dist[lo:hi], p[lo:lo + m])
            else:
                np.add(dist[lo:hi], p[lo:lo + m], out=dist[lo:hi])

    def blocks(q: np.ndarray) -> np.ndarray:
        mine = sketches(q[None, :], idx.planes)[0]
        for lo in range(0, n, BLOCK):
            part(mine, lo, min(lo + BLOCK, n))
        return _smallest(dist, idx.rerank)

    pool = ThreadPoolExecutor(1)

    def two_threads(q: np.ndarray) -> np.ndarray:
        mine = sketches(q[None, :], idx.planes)[0]
        other = pool.submit(part, mine, n // 2, n)
        part(mine, 0, n // 2)
        other.result()
        return _smallest(dist, idx.rerank)

    def two_stage(q: np.ndarray) -> np.ndarray:
        """The KEEP_FIRST nearest by the first 128 bits, then the nearest of
        them by all 384."""
        mine = sketches(q[None, :], idx.planes)[0]
        np.bitwise_xor(sk[0], mine[0], out=x)
        np.bitwise_count(x, out=g)
        np.bitwise_xor(sk[1], mine[1], out=x)
        np.bitwise_count(x, out=p)
        np.add(g, p, out=g)
        near = _smallest(g.astype(np.uint16), KEEP_FIRST)
        rest = np.bitwise_count(sk[2:, near] ^ mine[2:, None]).sum(axis=0, dtype=np.uint16)
        return near[_smallest(rest + g[near], idx.rerank)]

    return {"blocks": blocks, "two threads": two_threads, "two-stage": two_stage}


def timed(fs: list[Callable[[np.ndarray], object]], qs: np.ndarray, texts: list[str],
          encoder: object, reps: int) -> list[tuple[float, float]]:
    """(warm, cold) p50 ms of each f, interleaved question by question (the
    order rotating), so that each sees the same load."""
    cold: list[list[float]] = [[] for _ in fs]
    warm: list[list[float]] = [[] for _ in fs]
    turn = 0
    for _ in range(reps):
        for q, text in zip(qs, texts, strict=True):
            turn += 1
            for j in range(len(fs)):
                i = (j + turn) % len(fs)
                encoder.embed([text])  # type: ignore[attr-defined]
                for times in (cold[i], warm[i]):
                    t = time.perf_counter()
                    fs[i](q)
                    times.append((time.perf_counter() - t) * 1e3)
    return [(float(np.median(w)), float(np.median(c))) for w, c in zip(warm, cold, strict=True)]


def searcher(idx: LocalIndex) -> Callable[[np.ndarray], object]:
    return lambda q: idx.search(q, 32)


def recall(idx: LocalIndex, qs: np.ndarray, truth: list[set[int]]) -> float:
    return float(np.mean([len(set(idx.search(q, K)[0].tolist()) & t) / K
                          for q, t in zip(qs, truth, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    _, vecs = load_corpus(100_000)
    order = np.random.default_rng(0).permutation(len(vecs))
    chunks, mem = vecs[order[:1000]], np.ascontiguousarray(vecs[np.sort(order[1000:])])
    encoder = load_encoder(None, 1)
    texts = [question_text(q) or q for _, q, _ in faq_pairs()]
    faq = encoder.embed(texts).astype(np.float32)
    unit = mem / np.linalg.norm(mem, axis=1, keepdims=True)
    truth = {name: [set(np.argpartition(-(unit @ q), K)[:K].tolist()) for q in qs]
             for name, qs in (("faq", faq), ("chunks", chunks))}
    print(f"{len(mem):,} memories; {len(faq)} FAQ questions x {args.reps}; p50 ms "
          "(cold: an encoder call just before each search)")
    base = LocalIndex(PARAMS, mem.shape[1])
    base.add(np.arange(len(mem)), mem)
    rows = [("baseline (384 bits, 1,000)", base)]
    for name, bits, rerank in (("sketch 256 bits", 256, 1000), ("rerank 600", 384, 600)):
        idx = LocalIndex(PARAMS, mem.shape[1], rerank=rerank, sketch_bits=bits)
        idx.add(np.arange(len(mem)), mem)
        rows.append((name, idx))

    def shipped(q: np.ndarray) -> np.ndarray:
        return _smallest(base._hamming(q), base.rerank)

    variants = scans(base)
    got = timed([searcher(i) for _, i in rows] + [shipped, *variants.values()], faq, texts,
                encoder, args.reps)
    print(f"{'search':<28}{'recall@10 faq':>14}{'chunks':>8}{'warm':>8}{'cold':>8}"
          f"{'cold/base':>10}")
    for (name, idx), (warm, cold) in zip(rows, got, strict=False):
        print(f"{name:<28}{recall(idx, faq, truth['faq']):>14.3f}"
              f"{recall(idx, chunks, truth['chunks']):>8.3f}{warm:>8.3f}{cold:>8.3f}"
              f"{cold / got[0][1]:>10.2f}")
    print(f"{'Hamming scan and cut':<28}{'kept of base':>14}{'':>8}{'warm':>8}{'cold':>8}"
          f"{'cold/base':>10}")
    scan = got[len(rows):]
    for (name, f), (warm, cold) in zip([("the index (a pass a word)", shipped),
                                        *variants.items()], scan, strict=True):
        kept = np.mean([len(set(f(q).tolist()) & set(shipped(q).tolist())) / len(shipped(q))
                        for q in faq])
        print(f"{name:<28}{kept:>14.3f}{'':>8}{warm:>8.3f}{cold:>8.3f}{cold / scan[0][1]:>10.2f}")

if __name__ == "__main__":
    main()
