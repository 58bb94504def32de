"""Ingest throughput of a real spore, beside the encoder alone.

Real text chunks (the corpus of scripts/bench/corpus.py, not embedded here)
are sent to a real `spore node run` in batches of 32, as `spore ingest` sends
them: each is embedded, signed, stored durably (one fsynced transaction per
batch) and indexed. The baseline, in the same run, is the encoder alone on
the same chunks; the ratio is what signing, storage and indexing cost.

    .venv/bin/python scripts/bench/ingest.py [--chunks 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _spore import Spore
from corpus import gather_chunks

from agents.encoder import load_encoder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    texts = gather_chunks(args.chunks)
    with tempfile.TemporaryDirectory() as tmp, Spore(Path(tmp)) as spore:
        t = time.perf_counter()
        for i in range(0, len(texts), 32):
            spore.call("POST", "/v1/ingest", {"chunks": [
                {"text": c, "origin": f"bench#{i + k}"} for k, c in enumerate(texts[i:i + 32])]})
        spore_s = time.perf_counter() - t
        rss = spore.rss_mb
    enc = load_encoder(None, 1)
    t = time.perf_counter()
    for i in range(0, len(texts), 32):
        enc.embed(texts[i:i + 32])
    enc_s = time.perf_counter() - t
    result = {"chunks": len(texts), "mean_chars": sum(map(len, texts)) / len(texts),
              "spore_chunks_per_s": len(texts) / spore_s,
              "encoder_chunks_per_s": len(texts) / enc_s,
              "ratio": enc_s / spore_s, "rss_mb_after": rss}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['chunks']} chunks, mean {result['mean_chars']:.0f} chars")
    print(f"spore ingest   {result['spore_chunks_per_s']:7.1f} chunks/s "
          f"(HTTP batches of 32, durable, indexed); RSS after {rss:.0f} MB")
    print(f"encoder alone  {result['encoder_chunks_per_s']:7.1f} chunks/s")
    print(f"ratio          {result['ratio']:7.2f} (spore / encoder throughput)")


if __name__ == "__main__":
    main()
