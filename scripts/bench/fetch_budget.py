"""How many candidates must a swarm ask fetch to find what a full scan finds?

Replays a swarm ask's retrieval offline, with the daemon's own functions, on
the Debian FAQ: the answers spread round-robin over N spores (default 8); an
asker (a random spore) scans its own share fully, reads every probe bucket of
the DNA's LSH tables (what a small swarm does, `SwarmSettings.small_swarm`),
ranks the index entries found there by their 384-bit sketches (as
`Swarm.find` does) and fetches the content of the best `fetch`; the answer is
the exact-cosine ranking of what it holds and fetched. Reported for several
fetch budgets, each over the same LSH seeds, beside the full scan of all
chunks (the plain encoder) computed in the same run. No processes and no
network: it measures the ranking, not the time (`scripts/bench/swarm.py`
and `learning.py` measure that).

    .venv/bin/python scripts/bench/fetch_budget.py [--seeds 20] [--spores 8]
        [--budgets 8,12,16,24,32] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

import numpy as np
from learning import Corpus, load_corpus

from dht.index import sketch_planes
from dht.keys import (
    DEFAULT_BITS,
    DEFAULT_PROBES,
    DEFAULT_TABLES,
    LshParams,
    hyperplanes,
    probe_codes,
    table_codes_batch,
)


def _sections(order: np.ndarray, secs: np.ndarray) -> list[str]:
    return list(dict.fromkeys(secs[order]))


def replay(corpus: Corpus, seed: bytes, spores: int, budgets: list[int]) -> dict[str, Any]:
    """Per budget: questions whose section is the top-1 / among the top-5
    sections; and the full scan's, and how many remote candidates were reached."""
    params = LshParams(tables=DEFAULT_TABLES, bits=DEFAULT_BITS, probes=DEFAULT_PROBES,
                       seed=seed)
    cv, secs = corpus.cv, np.array([s for s, _ in corpus.chunks])
    planes = hyperplanes(params, cv.shape[1])
    codes = table_codes_batch(cv, planes)
    sketch = sketch_planes(seed, 384, cv.shape[1]).reshape(-1, cv.shape[1])
    bits = (cv @ sketch.T) > 0
    rng = np.random.default_rng(int.from_bytes(seed[:8], "big"))
    hits = {b: [0, 0] for b in ["full", *budgets]}
    reached = 0
    for qi, (sec, _) in enumerate(corpus.questions):
        q = corpus.qv[qi]
        cos = cv @ q
        local = np.arange(len(cv)) % spores == rng.integers(spores)
        remote = np.zeros(len(cv), bool)
        for table, row in enumerate(probe_codes(q, planes, params.probes)):
            remote |= np.isin(codes[:, table], row)
        remote &= ~local
        reached += int(remote.sum())
        cands = np.flatnonzero(remote)
        hamming = (bits[cands] != ((sketch @ q) > 0)).sum(axis=1)
        cands = cands[np.argsort(hamming, kind="stable")]
        rankings = {"full": np.argsort(-cos)}
        for b in budgets:
            held = np.concatenate([np.flatnonzero(local), cands[:b]])
            rankings[b] = held[np.argsort(-cos[held])]
        for name, order in rankings.items():
            top = _sections(order, secs)
            hits[name][0] += top[0] == sec
            hits[name][1] += sec in top[:5]
    n = len(corpus.questions)
    return {"top1": {str(k): v[0] / n for k, v in hits.items()},
            "top5": {str(k): v[1] / n for k, v in hits.items()},
            "reached": reached / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--spores", type=int, default=8)
    ap.add_argument("--budgets", default="8,12,16,24,32")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    corpus = load_corpus()
    runs = [replay(corpus, hashlib.sha256(b"lsh%d" % i).digest()[:16], args.spores, budgets)
            for i in range(args.seeds)]
    names = ["full", *map(str, budgets)]
    out = {"seeds": args.seeds, "spores": args.spores, "chunks": len(corpus.chunks),
           "questions": len(corpus.questions),
           "reached_mean": float(np.mean([r["reached"] for r in runs])),
           **{f"{k}_mean": {n: float(np.mean([r[k][n] for r in runs])) for n in names}
              for k in ("top1", "top5")},
           **{f"{k}_worst": {n: float(min(r[k][n] for r in runs)) for n in names}
              for k in ("top1", "top5")},
           "top5_seeds_below_full": {n: sum(r["top5"][n] < r["top5"]["full"] for r in runs)
                                     for n in names}}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"fetch budget: {args.seeds} LSH seeds, {args.spores} spores, {out['chunks']} FAQ "
          f"chunks, {out['questions']} questions; remote candidates reached per ask: "
          f"{out['reached_mean']:.0f}")
    print(f"{'fetched':<10}{'top-1 mean':>12}{'top-5 mean':>12}{'top-5 worst':>13}"
          f"{'seeds with top-5 < full scan':>31}")
    for n in names:
        label = "full scan" if n == "full" else n
        print(f"{label:<10}{out['top1_mean'][n]:>12.1%}{out['top5_mean'][n]:>12.1%}"
              f"{out['top5_worst'][n]:>13.1%}{out['top5_seeds_below_full'][n]:>31}")


if __name__ == "__main__":
    main()
