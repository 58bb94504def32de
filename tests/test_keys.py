"""LSH keys: deterministic, stable across processes, probes cheapest first."""

from __future__ import annotations

import hashlib
import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.keys import (
    DEFAULT_BITS,
    DEFAULT_PROBES,
    DEFAULT_TABLES,
    LshParams,
    bucket_key,
    bucket_keys,
    hyperplanes,
    probe_codes,
    probe_plan,
    table_codes,
    table_codes_batch,
)

ROOT = Path(__file__).resolve().parents[1]
DIM = 24
seeds = st.binary(min_size=16, max_size=16)
shapes = st.tuples(st.integers(1, 6), st.integers(1, 12), st.integers(0, 20))


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def flip_cost(emb: np.ndarray, planes: np.ndarray, table: int, home: int, code: int) -> float:
    proj = planes[table] @ emb
    flipped = [j for j in range(planes.shape[1]) if (home ^ code) >> j & 1]
    return float(sum(proj[j] ** 2 for j in flipped))


@settings(max_examples=40, deadline=None)
@given(seeds, shapes, st.integers(0, 2**32 - 1))
def test_probes_start_home_and_cost_never_decreases(seed: bytes, shape: tuple[int, int, int],
                                                     vec_seed: int) -> None:
    tables, bits, probes = shape
    planes = hyperplanes(LshParams(tables, bits, probes, seed), DIM)
    emb = unit(vec_seed)
    home = table_codes(emb, planes)
    per_table = probe_codes(emb, planes, probes)
    assert len(per_table) == tables
    for t, codes in enumerate(per_table):
        assert codes[0] == home[t]
        assert len(codes) == 1 + min(probes, 2**bits - 1)
        assert len(set(codes)) == len(codes)
        assert all(0 <= c < 2**bits for c in codes)
        costs = [flip_cost(emb, planes, t, int(home[t]), c) for c in codes]
        assert all(a <= b + 1e-6 for a, b in itertools.pairwise(costs))


@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(1, 7), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_probes_are_the_cheapest_flip_sets(seed: bytes, bits: int, probes: int,
                                           vec_seed: int) -> None:
    """Compared with every subset of bits: none cheaper was left out."""
    planes = hyperplanes(LshParams(2, bits, probes, seed), DIM)
    emb = unit(vec_seed)
    _, costs = probe_plan(emb, planes, probes)
    for t in range(2):
        m2 = (planes[t] @ emb) ** 2
        every = sorted(sum(m2[list(s)]) for k in range(1, bits + 1)
                       for s in itertools.combinations(range(bits), k))
        want = every[: min(probes, 2**bits - 1)]
        np.testing.assert_allclose(costs[t, 1:], want, rtol=1e-4, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(seeds, shapes)
def test_hyperplanes_are_deterministic_unit_vectors(seed: bytes,
                                                    shape: tuple[int, int, int]) -> None:
    params = LshParams(*shape, seed=seed)
    a, b = hyperplanes(params, DIM), hyperplanes(params, DIM)
    assert a.dtype == np.float32 and a.shape == (shape[0], shape[1], DIM)
    assert np.array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=2), 1.0, rtol=1e-5)


def test_different_seeds_give_different_planes() -> None:
    a = hyperplanes(LshParams(2, 8, 0, bytes(16)), DIM)
    b = hyperplanes(LshParams(2, 8, 0, bytes(15) + b"\1"), DIM)
    assert not np.array_equal(a, b)


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(1, 32))
def test_batch_codes_equal_single_codes(seed: bytes, tables: int, bits: int) -> None:
    planes = hyperplanes(LshParams(tables, bits, 0, seed), DIM)
    embs = np.stack([unit(i) for i in range(20)])
    batch = table_codes_batch(embs, planes)
    assert batch.dtype == np.uint32 and batch.shape == (20, tables)
    for i in range(20):
        assert np.array_equal(batch[i], table_codes(embs[i], planes))


@settings(max_examples=50, deadline=None)
@given(seeds, st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_bucket_key_is_32_bytes_and_tables_differ(seed: bytes, t1: int, t2: int,
                                                   code: int) -> None:
    k1, k2 = bucket_key(seed, t1, code), bucket_key(seed, t2, code)
    assert len(k1) == 32 and k1 == bucket_key(seed, t1, code)
    assert (k1 == k2) == (t1 == t2)


def test_bucket_key_encoding_is_pinned() -> None:
    """The DHT key format is a swarm-wide contract: changing it splits swarms."""
    seed = bytes(range(16))
    want = hashlib.sha256(b"sporemind/lsh/v1" + seed + (3).to_bytes(4, "big")
                          + (0xABCDE).to_bytes(4, "big")).digest()
    assert bucket_key(seed, 3, 0xABCDE) == want


def test_hyperplanes_are_pinned() -> None:
    """Bit-exact planes on every machine (SHA-256 stream, integer maths, IEEE float64)."""
    planes = hyperplanes(LshParams(2, 3, 1, bytes(range(16))), 8)
    assert hashlib.sha256(planes.tobytes()).hexdigest()[:16] == "5e95b1a435fdeee3"


def test_hyperplanes_follow_the_documented_recipe() -> None:
    """A plain-Python re-implementation of the spec gives the same bits."""
    seed, tables, bits, dim = bytes(range(16)), 2, 3, 8
    head = b"sporemind/lsh/planes/v1" + seed + b"".join(
        x.to_bytes(4, "big") for x in (tables, bits, dim))
    count = tables * bits * dim
    stream = b"".join(hashlib.sha256(head + i.to_bytes(4, "big")).digest()
                      for i in range(-(-count * 4 // 32)))
    ints = [sum(stream[4 * i:4 * i + 4]) - 510 for i in range(count)]
    want: list[np.float32] = []
    for p in range(tables * bits):
        row = ints[p * dim:(p + 1) * dim]
        norm = math.sqrt(sum(x * x for x in row))
        want.extend(np.float32(x / norm) for x in row)
    got = hyperplanes(LshParams(tables, bits, 0, seed), dim)
    assert got.ravel().tolist() == want


@settings(max_examples=20, deadline=None)
@given(seeds, shapes, st.integers(0, 2**32 - 1))
def test_bucket_keys_home_first_then_by_cost(seed: bytes, shape: tuple[int, int, int],
                                             vec_seed: int) -> None:
    params = LshParams(*shape, seed=seed)
    planes = hyperplanes(params, DIM)
    emb = unit(vec_seed)
    keys = bucket_keys(emb, params, planes)
    home = table_codes(emb, planes)
    tables, width = shape[0], 1 + min(shape[2], 2 ** shape[1] - 1)
    assert len(keys) == tables * width == len(set(keys))
    assert keys[:tables] == [bucket_key(seed, t, int(home[t])) for t in range(tables)]
    codes, costs = probe_plan(emb, planes, params.probes)
    by_key = {bucket_key(seed, t, int(codes[t, r])): float(costs[t, r])
              for t in range(tables) for r in range(width)}
    rest = [by_key[k] for k in keys[tables:]]
    assert rest == sorted(rest)


def test_keys_are_stable_across_processes() -> None:
    params = LshParams(DEFAULT_TABLES, DEFAULT_BITS, DEFAULT_PROBES, bytes(range(16)))
    emb = unit(7, 384)
    code = (
        "import sys, numpy as np\n"
        "from dht.keys import LshParams, bucket_keys, hyperplanes\n"
        f"p = LshParams({params.tables}, {params.bits}, {params.probes}, bytes(range(16)))\n"
        f"e = np.frombuffer(bytes.fromhex('{emb.tobytes().hex()}'), dtype=np.float32)\n"
        "print(b''.join(bucket_keys(e, p, hyperplanes(p, 384))).hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == b"".join(bucket_keys(emb, params, hyperplanes(params, 384))).hex()


@pytest.mark.parametrize(("tables", "bits", "probes", "seed"), [
    (0, 8, 2, bytes(16)), (300, 8, 2, bytes(16)), (4, 0, 2, bytes(16)), (4, 33, 2, bytes(16)),
    (4, 8, -1, bytes(16)), (4, 8, 65, bytes(16)), (4, 8, 2, bytes(15)), (4, 8, 2, bytes(17)),
])
def test_params_are_validated(tables: int, bits: int, probes: int, seed: bytes) -> None:
    with pytest.raises(ValueError, match="lsh"):
        LshParams(tables, bits, probes, seed)


def test_defaults_are_valid() -> None:
    LshParams(DEFAULT_TABLES, DEFAULT_BITS, DEFAULT_PROBES, bytes(16))
