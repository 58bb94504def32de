"""The spore's own nearest-memory index (pure, in memory).

Embeddings are kept as int8 codes with one scale per row (see
:mod:`dht.compact`), about 390 bytes per memory at dim 384. Search is LSH
multi-probe over the swarm's own tables (:mod:`dht.keys`), then an exact
re-rank of the candidates by their int8 dot product with the query, which is
the cosine up to quantisation (unit vectors).

Layout, per table: the codes of the first ``main`` positions sorted
(uint16 when bits ≤ 16, else uint32) with the positions in that order
(uint32); a bucket is the slice ``searchsorted(code)`` gives. Rows added
since the last merge sit in a small unsorted tail that is matched code by
code; the tail is merged (a stable sort that finds the sorted run) once it
outgrows ``max(256, min(2048, n // 32))`` rows, so one-at-a-time adds stay
cheap. At 100,000 memories and 12 tables this is ~38 MB of codes plus
~7 MB of tables.

Not thread-safe: one thread owns an index (the daemon's compute thread).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from dht.compact import to_int8
from dht.keys import LshParams, hyperplanes, probe_plan, table_codes_batch

__all__ = ["EXACT_BELOW", "LocalIndex"]

# Below this many memories a scan is about as fast as LSH and always exact.
EXACT_BELOW = 4096
_TAIL_MIN, _TAIL_MAX = 256, 2048
_SCAN_BLOCK = 16384  # rows dequantised at a time by the exact scan

F32 = npt.NDArray[np.float32]
I8 = npt.NDArray[np.int8]
I64 = npt.NDArray[np.int64]
RowIds = Sequence[int] | npt.NDArray[np.integer]


class LocalIndex:
    """Approximate nearest memories by cosine; rows are the storage's int64 ids."""

    def __init__(self, params: LshParams, dim: int, *, exact_below: int = EXACT_BELOW,
                 planes: F32 | None = None) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.params, self.dim, self.exact_below = params, dim, exact_below
        self.planes = hyperplanes(params, dim) if planes is None else planes
        if self.planes.shape != (params.tables, params.bits, dim):
            raise ValueError(f"planes have shape {self.planes.shape}, expected "
                             f"{(params.tables, params.bits, dim)}")
        self._key_dtype = np.uint16 if params.bits <= 16 else np.uint32
        self._n = 0
        self._main = 0  # positions [0, main) are in the sorted tables
        self._codes = np.zeros((0, dim), dtype=np.int8)
        self._scales = np.zeros(0, dtype=np.float32)
        self._rows = np.zeros(0, dtype=np.int64)
        self._sorted = np.zeros((params.tables, 0), dtype=self._key_dtype)
        self._order = np.zeros((params.tables, 0), dtype=np.uint32)
        self._row_order = np.zeros(0, dtype=np.uint32)  # main rows, by row id
        self._tail = np.zeros((0, params.tables), dtype=self._key_dtype)
        self.last_candidates = 0  # candidates re-ranked by the last search()

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (allocated, including spare capacity)."""
        arrays = (self._codes, self._scales, self._rows, self._sorted, self._order,
                  self._row_order, self._tail, self.planes)
        return sum(a.nbytes for a in arrays)

    # adding ---------------------------------------------------------------
    def add(self, rows: RowIds, embeddings: F32) -> None:
        """Index float embeddings (n, dim); they are stored as int8."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"expected ({len(rows)}, {self.dim}) embeddings, got {emb.shape}")
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
        # Buckets come from the int8 codes (the sign of a projection ignores
        # the scale), so a restarted spore files a memory where it was.
        buckets = table_codes_batch(codes.astype(np.float32), self.planes)
        self._grow(self._n + m)
        lo, hi = self._n, self._n + m
        self._codes[lo:hi], self._scales[lo:hi], self._rows[lo:hi] = codes, scales, ids
        self._tail[lo - self._main:hi - self._main] = buckets.astype(self._key_dtype)
        self._n = hi
        if hi - self._main > max(_TAIL_MIN, min(_TAIL_MAX, hi // 32)):
            self._merge()

    def _check_new(self, ids: I64) -> None:
        if len(np.unique(ids)) != len(ids):
            raise ValueError("row ids repeat within one add")
        if self._main:
            main_rows = self._rows[:self._main]
            at = np.searchsorted(main_rows, ids, sorter=self._row_order)
            hit = self._row_order[np.minimum(at, self._main - 1)]
            if (main_rows[hit] == ids).any():
                raise ValueError("row already indexed")
        if self._n > self._main and np.isin(ids, self._rows[self._main:self._n]).any():
            raise ValueError("row already indexed")

    def _grow(self, need: int) -> None:
        cap = len(self._rows)
        if need <= cap:
            return
        # 1.25× keeps spare capacity (and the copy) small: the int8 matrix dominates.
        cap = max(need, cap + cap // 4, 1024)
        tail_cap = cap - self._main
        self._codes = np.asarray(_resized(self._codes, cap), dtype=np.int8)
        self._scales = np.asarray(_resized(self._scales, cap), dtype=np.float32)
        self._rows = np.asarray(_resized(self._rows, cap), dtype=np.int64)
        self._tail = _resized(self._tail, tail_cap)

    def _merge(self) -> None:
        """Sort the tail into the tables."""
        n, main = self._n, self._main
        tail_pos = np.broadcast_to(np.arange(main, n, dtype=np.uint32), (self.params.tables,
                                                                         n - main))
        codes = np.concatenate([self._sorted, self._tail[:n - main].T], axis=1)
        pos = np.concatenate([self._order, tail_pos], axis=1)
        by_code = np.argsort(codes, axis=1, kind="stable")  # finds the sorted run
        self._sorted = np.take_along_axis(codes, by_code, axis=1)
        self._order = np.take_along_axis(pos, by_code, axis=1)
        self._row_order = np.argsort(self._rows[:n], kind="stable").astype(np.uint32)
        self._main = n
        self._tail = np.zeros((len(self._rows) - n, self.params.tables), dtype=self._key_dtype)

    # searching ------------------------------------------------------------
    def search(self, q: F32, k: int) -> tuple[I64, F32]:
        """Up to k (rows, approximate cosines), best first.

        Exact below `exact_below` memories, or when the probed buckets hold
        fewer than k memories.
        """
        q = self._query(q)
        if k <= 0 or self._n == 0:
            return _empty()
        if self._n < self.exact_below:
            self.last_candidates = self._n
            return self.exact(q, k)
        codes, _ = probe_plan(q, self.planes, self.params.probes)
        cand = self._candidates(codes)
        if len(cand) < k:
            self.last_candidates = self._n
            return self.exact(q, k)
        self.last_candidates = len(cand)
        scores = (self._codes[cand].astype(np.float32) @ q) * self._scales[cand]
        return self._best(cand, scores, k)

    def exact(self, q: F32, k: int) -> tuple[I64, F32]:
        """The same as `search`, by scanning every memory."""
        q = self._query(q)
        if k <= 0 or self._n == 0:
            return _empty()
        scores = np.empty(self._n, dtype=np.float32)
        for lo in range(0, self._n, _SCAN_BLOCK):
            hi = min(lo + _SCAN_BLOCK, self._n)
            scores[lo:hi] = (self._codes[lo:hi].astype(np.float32) @ q) * self._scales[lo:hi]
        return self._best(np.arange(self._n), scores, k)

    def embedding(self, row: int) -> F32:
        """The stored (dequantised) embedding of a row; KeyError if absent."""
        pos = self._position(row)
        out: F32 = self._codes[pos].astype(np.float32) * self._scales[pos]
        return out

    def _position(self, row: int) -> int:
        if self._main:
            at = int(np.searchsorted(self._rows[:self._main], row, sorter=self._row_order))
            if at < self._main and self._rows[self._row_order[at]] == row:
                return int(self._row_order[at])
        hits = np.flatnonzero(self._rows[self._main:self._n] == row)
        if len(hits):
            return self._main + int(hits[0])
        raise KeyError(row)

    def _query(self, q: F32) -> F32:
        vec = np.asarray(q, dtype=np.float32)
        if vec.shape != (self.dim,):
            raise ValueError(f"query must have shape ({self.dim},), got {vec.shape}")
        return vec

    def _candidates(self, codes: npt.NDArray[np.uint32]) -> I64:
        """Distinct positions in the probed buckets of every table (and the tail)."""
        tables, width = codes.shape
        keys = codes.astype(self._key_dtype)
        main = self._main
        found: list[I64] = []
        if main:
            lo = np.empty((tables, width), dtype=np.int64)
            hi = np.empty((tables, width), dtype=np.int64)
            for t in range(tables):
                lo[t] = np.searchsorted(self._sorted[t], keys[t], side="left")
                hi[t] = np.searchsorted(self._sorted[t], keys[t], side="right")
            lens = (hi - lo).ravel()
            starts = (lo + np.arange(tables)[:, None] * main).ravel()
            found.append(self._order.ravel()[_ranges(starts, lens)].astype(np.int64))
        if self._n > main:
            tail = self._tail[:self._n - main]
            hit = (tail[:, :, None] == keys[None, :, :]).any(axis=(1, 2))
            found.append(np.flatnonzero(hit) + main)
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def _best(self, pos: I64, scores: F32, k: int) -> tuple[I64, F32]:
        if len(pos) > k:
            top = np.argpartition(-scores, k - 1)[:k]
            pos, scores = pos[top], scores[top]
        rows = self._rows[pos]
        order = np.lexsort((rows, -scores))  # best first, ties by row id
        return rows[order], scores[order].astype(np.float32)


def _ranges(starts: I64, lens: I64) -> I64:
    """Concatenation of arange(s, s + n) for each (s, n), vectorised."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    keep = lens > 0
    starts, lens = starts[keep], lens[keep]
    ends = np.cumsum(lens)
    shift = np.repeat(starts - (ends - lens), lens)
    out: I64 = np.arange(total, dtype=np.int64) + shift
    return out


def _resized(a: npt.NDArray[np.generic], rows: int) -> npt.NDArray[np.generic]:
    out = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
    keep = min(rows, len(a))
    out[:keep] = a[:keep]
    return out


def _empty() -> tuple[I64, F32]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
