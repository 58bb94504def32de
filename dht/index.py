"""The spore's own nearest-memory index (pure, in memory).

Each memory is kept as int8 codes with one scale (see :mod:`dht.compact`),
388 bytes at dim 384, plus a 384-bit SimHash *sketch* (48 bytes): the signs
of its projections on random hyperplanes derived from the swarm seed.

``search`` is LSH in its Hamming-ranking form: the Hamming distance between
the query's sketch and every memory's sketch estimates their angle, the
``rerank`` memories with the smallest distance are the candidates, and those
are re-ranked exactly by their int8 dot product with the query (the cosine
up to quantisation: the vectors are unit length).

Why not the swarm's bucket tables (multi-probe over ``LshParams``)? Measured
on 99,000 real MiniLM embeddings with held-out chunks as queries, the ten
nearest neighbours sit at a median cosine of only 0.64, and probed buckets
had to return ~20% of all memories (3.4 ms of re-ranking) to hold 95% of
them. Ranking all sketches by Hamming distance is one contiguous pass of
XOR and popcount (6 words a row, ~0.45 ms at 100,000) and keeps 98% of them
among the nearest 1,000 sketches: recall@10 0.98, p50 0.8 ms, 46 MB at
100,000 memories (scripts/bench/recall.py). The pass is linear in the number
of memories; past a million, add a coarse pre-selection. The swarm's bucket
parameters stay tuned for the DHT instead (few keys per memory and query).

Adding is appending (amortised growth); a row id that is not above all
earlier ones costs one O(n) duplicate check.

Not thread-safe: one thread owns an index (the daemon's compute thread).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from dht.compact import to_int8
from dht.keys import LshParams, hyperplanes, table_codes_batch

__all__ = ["RERANK", "SKETCH_BITS", "LocalIndex", "sketch_planes", "sketches"]

SKETCH_BITS = 384  # 6 × 64-bit words a memory
# Memories re-ranked by int8 dot product per search; below this many the
# index simply scans them all, exactly.
RERANK = 1000
_SKETCH_PREFIX = b"sporemind/sketch/v1"
_WORD_BITS = 64
_PLANE_BITS = 16  # sketch planes are generated 16 to a "table"
# Candidates dequantised at a time: 80 x 384 float32 = 120 KiB, in cache and
# under glibc's mmap threshold (agents.encoder fixes it at 128 KiB), so each
# block's temporaries come from the heap; 1,024 (1.5 MB) were fresh pages
# each time: 482 page faults an ask at 100,000 memories, _scores 1.14 -> 0.14 ms.
_RERANK_BLOCK = 80
# The exact scan (every spore of up to `rerank` memories) in the same blocks:
# 16,384 rows made fresh pages each ask too (scripts/bench/index_scan.py:
# 5-6x faster at 300, 1,000 and 100,000 memories).
_SCAN_BLOCK = _RERANK_BLOCK
_SAMPLE_STEP = 8  # 1 distance in 8 guesses the candidates' cut

F32 = npt.NDArray[np.float32]
I8 = npt.NDArray[np.int8]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
RowIds = Sequence[int] | npt.NDArray[np.integer]


def sketch_planes(seed: bytes, bits: int, dim: int) -> F32:
    """Hyperplanes of the local sketch, (bits // 16, 16, dim), from the swarm seed."""
    if bits < _WORD_BITS or bits % _WORD_BITS:
        raise ValueError(f"sketch bits must be a positive multiple of 64, got {bits}")
    local_seed = hashlib.sha256(_SKETCH_PREFIX + seed).digest()[:16]
    return hyperplanes(LshParams(bits // _PLANE_BITS, _PLANE_BITS, 0, local_seed), dim)


def sketches(embs: F32, planes: F32) -> U64:
    """(n, dim) → (n, words) uint64 sign bits."""
    codes = table_codes_batch(embs, planes).astype(np.uint16)
    return np.ascontiguousarray(codes).view(np.uint64)


class LocalIndex:
    """Approximate nearest memories by cosine; rows are the storage's int64 ids.

    Only ``params.seed`` shapes the index (it seeds the sketch planes).
    """

    def __init__(self, params: LshParams, dim: int, *, rerank: int = RERANK,
                 sketch_bits: int = SKETCH_BITS) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if rerank < 1:
            raise ValueError(f"rerank must be positive, got {rerank}")
        self.params, self.dim, self.rerank = params, dim, rerank
        self.planes = sketch_planes(params.seed, sketch_bits, dim)
        self._words = sketch_bits // _WORD_BITS
        self._n = 0
        self._rows_increase = True  # row ids appended in increasing order so far
        self._codes = np.zeros((0, dim), dtype=np.int8)
        self._scales = np.zeros(0, dtype=np.float32)
        self._rows = np.zeros(0, dtype=np.int64)
        self._sketch = np.zeros((self._words, 0), dtype=np.uint64)  # word-major: one pass a word
        self._xor = np.zeros(0, dtype=np.uint64)  # scratch for the scan
        self._pop = np.zeros(0, dtype=np.uint8)
        self._group = np.zeros(0, dtype=np.uint8)
        self._dist = np.zeros(0, dtype=np.uint16)
        self.last_candidates = 0  # memories re-ranked by the last search()

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (allocated, including spare capacity)."""
        arrays = (self._codes, self._scales, self._rows, self._sketch, self._xor, self._pop,
                  self._group, self._dist, self.planes)
        return sum(a.nbytes for a in arrays)

    # adding ---------------------------------------------------------------
    def add(self, rows: RowIds, embeddings: F32) -> None:
        """Index float embeddings (n, dim); they are stored as int8."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) embeddings, got {emb.shape}")
        codes, scales = to_int8(emb)
        self.add_compact(rows, codes, scales)

    def add_compact(self, rows: RowIds, codes: I8, scales: F32) -> None:
        """Index int8 codes (n, dim) with their scales (n,), e.g. loaded from storage.

        Row ids must be new: ValueError if one is already indexed or repeated.
        """
        ids = np.asarray(rows, dtype=np.int64).reshape(-1)
        codes = np.asarray(codes)
        scales = np.asarray(scales, dtype=np.float32).reshape(-1)
        m = len(ids)
        if codes.dtype != np.int8 or codes.shape != (m, self.dim) or scales.shape != (m,):
            raise ValueError(f"expected {m} rows, int8 codes ({m}, {self.dim}) and {m} scales; "
                             f"got {codes.dtype} {codes.shape} and {scales.shape}")
        if m == 0:
            return
        if not np.isfinite(scales).all() or (scales < 0).any():
            raise ValueError("scales must be finite and non-negative")
        self._check_new(ids)
        increasing = bool(np.all(ids[1:] > ids[:-1])) and (
            self._n == 0 or bool(ids[0] > self._rows[self._n - 1]))
        # Sketched from the int8 codes (a sign ignores the scale), so a
        # restarted spore that loads them from storage gets the same index.
        sketch = sketches(codes.astype(np.float32), self.planes)
        self._grow(self._n + m)
        lo, hi = self._n, self._n + m
        self._codes[lo:hi], self._scales[lo:hi], self._rows[lo:hi] = codes, scales, ids
        self._sketch[:, lo:hi] = sketch.T
        self._rows_increase = self._rows_increase and increasing
        self._n = hi

    def remove(self, rows: RowIds) -> int:
        """Drop rows (a forgotten memory's); returns how many were indexed."""
        n = self._n
        gone = np.isin(self._rows[:n], np.asarray(rows, dtype=np.int64).reshape(-1))
        dropped = int(gone.sum())
        if dropped:
            keep = np.flatnonzero(~gone)
            m = len(keep)
            self._codes[:m], self._scales[:m] = self._codes[keep], self._scales[keep]
            self._rows[:m], self._sketch[:, :m] = self._rows[keep], self._sketch[:, keep]
            self._n = m
        return dropped

    def _check_new(self, ids: I64) -> None:
        if len(np.unique(ids)) != len(ids):
            raise ValueError("row ids repeat within one add")
        n = self._n
        fresh = self._rows_increase and n and ids.min() > self._rows[n - 1]
        if n and not fresh and np.isin(ids, self._rows[:n]).any():
            raise ValueError("row already indexed")

    def _grow(self, need: int) -> None:
        cap = len(self._rows)
        if need <= cap:
            return
        # 1.125×: spare capacity stays small (the int8 matrix is most of the
        # memory), and at 100,000 rows a copy every ~11,000 adds is ~2 µs an add.
        cap = max(need, cap + cap // 8, 1024)
        self._codes = np.concatenate([self._codes, np.zeros((cap - len(self._codes), self.dim),
                                                            dtype=np.int8)])
        self._scales = np.resize(self._scales, cap)
        self._rows = np.resize(self._rows, cap)
        sketch = np.zeros((self._words, cap), dtype=np.uint64)
        sketch[:, :self._n] = self._sketch[:, :self._n]
        self._sketch = sketch
        self._xor = np.zeros(cap, dtype=np.uint64)
        self._pop = np.zeros(cap, dtype=np.uint8)
        self._group = np.zeros(cap, dtype=np.uint8)
        self._dist = np.zeros(cap, dtype=np.uint16)

    # searching ------------------------------------------------------------
    def search(self, q: F32, k: int) -> tuple[I64, F32]:
        """Up to k (rows, approximate cosines), best first.

        Exact when the index holds no more than `rerank` (or k) memories.
        """
        q = self._query(q)
        budget = max(self.rerank, k)
        if k <= 0 or self._n <= budget:
            return self.exact(q, k)
        cand = _smallest(self._hamming(q), budget)
        self.last_candidates = len(cand)
        return self._best(cand, self._scores(cand, q), k)

    def exact(self, q: F32, k: int) -> tuple[I64, F32]:
        """The same as `search`, by scanning every memory."""
        q = self._query(q)
        self.last_candidates = self._n
        if k <= 0 or self._n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores = np.empty(self._n, dtype=np.float32)
        for lo in range(0, self._n, _SCAN_BLOCK):
            hi = min(lo + _SCAN_BLOCK, self._n)
            scores[lo:hi] = (self._codes[lo:hi].astype(np.float32) @ q) * self._scales[lo:hi]
        return self._best(np.arange(self._n), scores, k)

    def embedding(self, row: int) -> F32:
        """The stored (dequantised) embedding of a row; KeyError if absent."""
        rows = self._rows[:self._n]
        if self._rows_increase:
            at = int(np.searchsorted(rows, row))
            hits = [at] if at < self._n and rows[at] == row else []
        else:
            hits = np.flatnonzero(rows == row).tolist()
        if not hits:
            raise KeyError(row)
        out: F32 = self._codes[hits[0]].astype(np.float32) * self._scales[hits[0]]
        return out

    def _query(self, q: F32) -> F32:
        vec = np.asarray(q, dtype=np.float32)
        if vec.shape != (self.dim,):
            raise ValueError(f"query must have shape ({self.dim},), got {vec.shape}")
        if not np.isfinite(vec).all():
            raise ValueError("query has NaN or infinite values")
        return vec

    def _hamming(self, q: F32) -> npt.NDArray[np.uint16]:
        """Hamming distance from the query's sketch to every memory's, in scratch space."""
        n = self._n
        mine = sketches(q[None, :], self.planes)[0]
        dist, xor, pop, group = self._dist[:n], self._xor[:n], self._pop[:n], self._group[:n]
        dist.fill(0)
        # Three words (≤ 192 bits) add up in uint8, the cheapest add; then into uint16.
        for first in range(0, self._words, 3):
            for w in range(first, min(first + 3, self._words)):
                np.bitwise_xor(self._sketch[w, :n], mine[w], out=xor)
                np.bitwise_count(xor, out=group if w == first else pop)
                if w != first:
                    np.add(group, pop, out=group)
            np.add(dist, group, out=dist)
        return dist

    def _scores(self, pos: I64, q: F32) -> F32:
        """Approximate cosines of some positions, in blocks that stay in cache."""
        out = np.empty(len(pos), dtype=np.float32)
        for lo in range(0, len(pos), _RERANK_BLOCK):
            part = pos[lo:lo + _RERANK_BLOCK]
            out[lo:lo + len(part)] = (self._codes[part].astype(np.float32) @ q) * self._scales[part]
        return out

    def _best(self, pos: I64, scores: F32, k: int) -> tuple[I64, F32]:
        if len(pos) > k:
            top = np.argpartition(-scores, k - 1)[:k]
            pos, scores = pos[top], scores[top]
        rows = self._rows[pos]
        order = np.lexsort((rows, -scores))  # best first, ties by row id
        return rows[order], scores[order].astype(np.float32)


def _smallest(dist: npt.NDArray[np.uint16], count: int) -> I64:
    """Positions of the `count` or so smallest distances (all ties at the cut), ascending.

    The cut is guessed from every 8th distance (partition of a small sample),
    then moved one step at a time until it is the smallest distance that
    keeps at least `count`; cheaper than a partition or a histogram of all.
    """
    count = min(count, len(dist))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    sample = dist[::_SAMPLE_STEP]
    at = min(len(sample) - 1, count // _SAMPLE_STEP)
    cut = int(np.partition(sample, at)[at])
    while np.count_nonzero(dist <= cut) < count:
        cut += 1
    while cut > 0 and np.count_nonzero(dist <= cut - 1) >= count:
        cut -= 1
    return np.flatnonzero(dist <= cut)
