"""Embedding → LSH bucket keys (pure: no I/O, no clock, no hidden randomness).

SimHash with ``tables`` independent tables of ``bits`` random hyperplanes each,
plus multi-probe (Lv et al., VLDB 2007): besides its home bucket, a query also
visits the buckets reached by flipping the bits it is least sure about.

The keys are DHT keys shared by every spore of a swarm, so everything here is
bit-exact across processes, machines and numpy versions:

* Hyperplanes come from SHA-256 in counter mode over the swarm DNA's 16-byte
  seed (see :func:`hyperplanes`), turned into small integers with integer
  arithmetic and scaled to unit length with IEEE float64 (correctly rounded
  ``sqrt`` and division), then cast to float32. No numpy RNG is involved, so a
  re-implementation in another language yields the same planes.
* Bit ``j`` of a table's code is 1 iff ``<emb, plane_j> > 0`` (0 at exactly 0).
* :func:`bucket_key` hashes a fixed-width big-endian encoding.

Two machines encoding the same text may still differ in the last float bits
of the embedding; that can only move a projection that is within rounding of
zero, and multi-probe covers exactly those bits first.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_PROBES",
    "DEFAULT_TABLES",
    "KEY_PREFIX",
    "MAX_PROBES",
    "MAX_TABLES",
    "LshParams",
    "bucket_key",
    "bucket_keys",
    "hyperplanes",
    "probe_codes",
    "probe_plan",
    "table_codes",
    "table_codes_batch",
]

# Chosen for the DHT: each memory is filed under 8 keys (× 3 replicas) and a
# question looks up its 24 cheapest keys. Questions and their answers sit at
# cosines of only 0.6–0.8 with this encoder, so buckets must be coarse: on the
# Debian FAQ (question → its own answer section, 24 lookups) 14 bits found
# 19–48 %, 8 bits 73 %, 6 bits 91 % (measured by hand; see the README). At
# 6 bits a swarm of 100,000 memories has ~1,500 per bucket, more than a
# bucket keeps (32, the fittest first): big swarms need more bits in their
# DNA, or more tables. The local index does not depend on these.
DEFAULT_TABLES = 8
DEFAULT_BITS = 6
DEFAULT_PROBES = 8

MAX_TABLES = 256
MAX_PROBES = 64
SEED_BYTES = 16
KEY_PREFIX = b"sporemind/lsh/v1"
_PLANES_PREFIX = b"sporemind/lsh/planes/v1"
_BATCH = 8192  # rows projected at a time, bounds the temporary (rows × tables·bits)

F32 = npt.NDArray[np.float32]
U32 = npt.NDArray[np.uint32]


@dataclass(frozen=True)
class LshParams:
    """The swarm's LSH shape; part of the signed swarm DNA."""

    tables: int
    bits: int
    probes: int
    seed: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.tables <= MAX_TABLES:
            raise ValueError(f"lsh tables must be 1..{MAX_TABLES}, got {self.tables}")
        if not 1 <= self.bits <= 32:
            raise ValueError(f"lsh bits must be 1..32, got {self.bits}")
        if not 0 <= self.probes <= MAX_PROBES:
            raise ValueError(f"lsh probes must be 0..{MAX_PROBES}, got {self.probes}")
        if not isinstance(self.seed, bytes) or len(self.seed) != SEED_BYTES:
            raise ValueError(f"lsh seed must be {SEED_BYTES} bytes")


def hyperplanes(params: LshParams, dim: int) -> F32:
    """Unit hyperplanes, shape (tables, bits, dim), float32; keep the result.

    Entry = (sum of four bytes of the SHA-256 stream) − 510, an integer in
    [−510, 510] that is close to Gaussian (Irwin–Hall), so the planes are
    close to rotation-invariant as SimHash wants. Stream block ``i`` is
    ``SHA-256(prefix ‖ seed ‖ tables ‖ bits ‖ dim ‖ i)``, all as 4-byte
    big-endian integers.
    """
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    count = params.tables * params.bits * dim
    head = _PLANES_PREFIX + params.seed + struct.pack(">III", params.tables, params.bits, dim)
    blocks = -(-count * 4 // 32)
    stream = b"".join(hashlib.sha256(head + struct.pack(">I", i)).digest()
                      for i in range(blocks))
    lanes = np.frombuffer(stream, dtype=np.uint8)[: count * 4].reshape(count, 4)
    ints = lanes.astype(np.int64).sum(axis=1) - 510
    ints = ints.reshape(params.tables * params.bits, dim)
    norms = np.sqrt((ints * ints).sum(axis=1).astype(np.float64))  # exact integer sums
    norms[norms == 0] = 1.0
    planes: F32 = (ints.astype(np.float64) / norms[:, None]).astype(np.float32)
    return planes.reshape(params.tables, params.bits, dim)


def _codes_from_projections(proj: F32) -> U32:
    """(…, tables, bits) projections → (…, tables) uint32 codes."""
    weights = np.left_shift(np.uint64(1), np.arange(proj.shape[-1], dtype=np.uint64))
    codes: U32 = ((proj > 0) * weights).sum(axis=-1, dtype=np.uint64).astype(np.uint32)
    return codes


def _project(emb: F32, planes: F32) -> F32:
    tables, bits, dim = planes.shape
    vec = np.asarray(emb, dtype=np.float32).reshape(dim)
    proj = planes.reshape(tables * bits, dim) @ vec
    return np.asarray(proj, dtype=np.float32).reshape(tables, bits)


def table_codes(emb: F32, planes: F32) -> U32:
    """Home bucket code of one embedding in each table: uint32 (tables,)."""
    return _codes_from_projections(_project(emb, planes))


def table_codes_batch(embs: F32, planes: F32) -> U32:
    """Home bucket codes of many embeddings: (n, dim) → uint32 (n, tables)."""
    tables, bits, dim = planes.shape
    embs = np.asarray(embs, dtype=np.float32)
    if embs.ndim != 2 or embs.shape[1] != dim:
        raise ValueError(f"expected (n, {dim}) embeddings, got {embs.shape}")
    flat = planes.reshape(tables * bits, dim).T
    out = np.empty((embs.shape[0], tables), dtype=np.uint32)
    for lo in range(0, embs.shape[0], _BATCH):
        proj = (embs[lo:lo + _BATCH] @ flat).reshape(-1, tables, bits)
        out[lo:lo + _BATCH] = _codes_from_projections(proj)
    return out


def _dominated(bounds: tuple[int, ...]) -> int:
    """How many increasing sequences t_1 < … < t_j have 0 ≤ t_i ≤ bounds[i]."""
    ways = {-1: 1}  # ways[v]: sequences so far whose last element is v
    for bound in bounds:
        acc, nxt = 0, {}
        for v in range(bound + 1):
            acc += ways.get(v - 1, 0)
            nxt[v] = acc
        ways = nxt
    return sum(ways.values())


def _rank_floor(flips: tuple[int, ...]) -> int:
    """A lower bound on the 1-based probe rank of a flip set, for any margins.

    Indices refer to bits sorted by increasing margin. Every set T with
    |T| = j ≤ k = |S| whose elements are bounded element-wise by the j largest
    of S costs no more than S, and precedes it in (cost, size, lexicographic)
    order; S itself is counted too.
    """
    k = len(flips)
    return sum(_dominated(flips[k - j:]) for j in range(1, k + 1))


@lru_cache(maxsize=64)
def _perturbations(bits: int, probes: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Every flip set that can be among the `probes` cheapest, in (size, lexicographic) order.

    The rank floor grows with each element, so a depth-first walk stops at the
    first element value whose smallest completion is already out of reach.
    Returns the sets as a 0/1 float32 matrix and the same as int64.
    """
    sets: list[tuple[int, ...]] = []

    def walk(prefix: tuple[int, ...], size: int) -> None:
        if len(prefix) == size:
            sets.append(prefix)
            return
        start = prefix[-1] + 1 if prefix else 0
        for v in range(start, bits - (size - len(prefix)) + 1):
            tail = tuple(range(v, v + size - len(prefix)))
            if _rank_floor(prefix + tail) > probes:
                break
            walk((*prefix, v), size)

    for size in range(1, bits + 1):
        if (1 << size) - 1 > probes:
            break
        walk((), size)
    mask = np.zeros((len(sets), bits), dtype=np.float32)
    for i, s in enumerate(sets):
        mask[i, list(s)] = 1.0
    return mask, mask.astype(np.int64)


def probe_plan(emb: F32, planes: F32, probes: int) -> tuple[U32, F32]:
    """Codes (tables, 1 + p) and their costs, home code first, cost non-decreasing.

    p = min(probes, 2**bits − 1). The cost of a probe is the sum of the squared
    margins (distance of `emb` to each flipped hyperplane): under a Gaussian
    model the chance that a neighbour sits across a set of boundaries falls
    with exp(−Σ margin²) (Lv et al.). Ties keep (size, lexicographic) order.
    """
    proj = _project(emb, planes)
    tables, bits = proj.shape
    home = _codes_from_projections(proj)
    p = min(probes, (1 << bits) - 1)
    if p == 0:
        return home[:, None].copy(), np.zeros((tables, 1), dtype=np.float32)
    margin2 = proj * proj  # planes are unit length, so |proj| is the distance
    by_margin = np.argsort(margin2, axis=1, kind="stable")
    table = np.arange(tables)[:, None]
    mask, mask_int = _perturbations(bits, p)
    costs = margin2[table, by_margin] @ mask.T  # (tables, sets)
    pick = np.argsort(costs, axis=1, kind="stable")[:, :p]
    bitval = np.left_shift(np.int64(1), by_margin.astype(np.int64))  # (tables, bits)
    flips = bitval @ mask_int.T  # (tables, sets): XOR of distinct bits == sum
    out_codes = np.empty((tables, p + 1), dtype=np.uint32)
    out_costs = np.zeros((tables, p + 1), dtype=np.float32)
    out_codes[:, 0] = home
    out_codes[:, 1:] = home[:, None] ^ flips[table, pick].astype(np.uint32)
    out_costs[:, 1:] = costs[table, pick]
    return out_codes, out_costs


def probe_codes(emb: F32, planes: F32, probes: int) -> list[list[int]]:
    """Per table: the home code, then up to `probes` neighbours by increasing cost."""
    codes, _ = probe_plan(emb, planes, probes)
    return [[int(c) for c in row] for row in codes]


def bucket_key(seed: bytes, table: int, code: int) -> bytes:
    """32-byte DHT key: SHA-256(KEY_PREFIX ‖ seed ‖ table u32 BE ‖ code u32 BE)."""
    if not (0 <= table < 1 << 32 and 0 <= code < 1 << 32):
        raise ValueError(f"table and code must fit 32 bits, got {table}, {code}")
    return hashlib.sha256(KEY_PREFIX + seed + struct.pack(">II", table, code)).digest()


def bucket_keys(emb: F32, params: LshParams, planes: F32, limit: int | None = None
                ) -> list[bytes]:
    """All keys a query visits, interleaved by cost across tables.

    First the home bucket of every table (table order), then every probe of
    every table sorted by cost (ties: table, then per-table rank). So a caller
    that can only afford the first N keys gets the N most promising buckets.
    Length is tables × (1 + min(probes, 2**bits − 1)), or `limit` if smaller
    (only the keys returned are hashed).
    """
    codes, costs = probe_plan(emb, planes, params.probes)
    tables, width = codes.shape
    rank = np.tile(np.arange(width), tables)
    order = np.lexsort((rank, np.repeat(np.arange(tables), width), costs.ravel(), rank > 0))
    keys = [bucket_key(params.seed, int(i) // width, int(codes.flat[i]))
            for i in order[:limit]]
    return keys
