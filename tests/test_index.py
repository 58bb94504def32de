"""The local nearest-memory index and compact embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dht import compact
from dht.index import LocalIndex, _smallest
from dht.keys import LshParams

DIM = 64
PARAMS = LshParams(tables=4, bits=10, probes=2, seed=bytes(range(16)))


def unit_rows(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def clustered(n: int, seed: int = 0, centres: int = 40, noise: float = 0.6) -> np.ndarray:
    """Unit vectors around a few centres: neighbours exist, as in real text."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, DIM))
    pick = rng.integers(0, centres, n)
    return unit_rows(c[pick] + noise * rng.standard_normal((n, DIM)))


@pytest.fixture(scope="module")
def memories() -> np.ndarray:
    return clustered(3000)


@pytest.fixture(scope="module")
def index(memories: np.ndarray) -> LocalIndex:
    idx = LocalIndex(PARAMS, DIM, rerank=300)
    idx.add(np.arange(1000, 1000 + len(memories)), memories)
    return idx


def test_len_and_memory(index: LocalIndex, memories: np.ndarray) -> None:
    assert len(index) == len(memories)
    assert index.nbytes < len(memories) * (DIM + 4 + 8 + 48 + 11) * 1.3 + 200_000


def test_an_indexed_memory_finds_itself_first(index: LocalIndex, memories: np.ndarray) -> None:
    for i in range(0, 3000, 97):
        rows, scores = index.search(memories[i], 5)
        assert rows[0] == 1000 + i
        assert scores[0] == pytest.approx(1.0, abs=0.02)
        assert list(scores) == sorted(scores, reverse=True)
        assert rows.dtype == np.int64 and scores.dtype == np.float32


def test_search_recalls_the_exact_neighbours(index: LocalIndex, memories: np.ndarray) -> None:
    queries = unit_rows(memories[:200] + 0.5 * np.random.default_rng(1).standard_normal(
        (200, DIM)))
    truth = np.argsort(-(queries @ memories.T), axis=1)[:, :10] + 1000
    found = 0
    for q, want in zip(queries, truth, strict=True):
        rows, _ = index.search(q, 10)
        found += len(set(rows.tolist()) & set(want.tolist()))
        assert index.last_candidates < len(index)
    assert found / truth.size >= 0.9


def test_exact_matches_float_cosine(index: LocalIndex, memories: np.ndarray) -> None:
    q = clustered(1, seed=9)[0]
    rows, scores = index.exact(q, 10)
    cos = memories @ q
    np.testing.assert_allclose(scores, cos[rows - 1000], atol=0.02)
    assert rows[0] - 1000 == int(np.argmax(cos))


def test_incremental_add_equals_bulk_add(memories: np.ndarray) -> None:
    part = memories[:1500]
    bulk = LocalIndex(PARAMS, DIM, rerank=200)
    bulk.add(np.arange(len(part)), part)
    one_by_one = LocalIndex(PARAMS, DIM, rerank=200)
    for i in np.random.default_rng(3).permutation(len(part)):  # rows out of order too
        one_by_one.add([i], part[i:i + 1])
    for q in clustered(20, seed=4):
        a, b = bulk.search(q, 10), one_by_one.search(q, 10)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    np.testing.assert_array_equal(bulk.embedding(7), one_by_one.embedding(7))


def test_add_compact_equals_add(memories: np.ndarray) -> None:
    codes, scales = compact.to_int8(memories[:500])
    a, b = LocalIndex(PARAMS, DIM, rerank=100), LocalIndex(PARAMS, DIM, rerank=100)
    a.add(np.arange(500), memories[:500])
    b.add_compact(np.arange(500), codes, scales)
    q = memories[600]
    assert np.array_equal(a.search(q, 10)[0], b.search(q, 10)[0])


def test_small_index_is_exact_and_returns_what_it_has(memories: np.ndarray) -> None:
    idx = LocalIndex(PARAMS, DIM)
    assert idx.search(memories[0], 3)[0].size == 0
    idx.add([5, 6, 7], memories[:3])
    rows, scores = idx.search(memories[1], 10)
    assert sorted(rows.tolist()) == [5, 6, 7] and rows[0] == 6 and len(scores) == 3
    assert idx.search(memories[1], 0)[0].size == 0
    big = LocalIndex(PARAMS, DIM, rerank=50)
    big.add(np.arange(400), memories[:400])
    for q in memories[1000:1010]:
        assert np.array_equal(big.search(q, 400)[0], big.exact(q, 400)[0])  # k > rerank


def test_embedding_is_the_dequantised_vector(index: LocalIndex, memories: np.ndarray) -> None:
    np.testing.assert_allclose(index.embedding(1042), memories[42], atol=0.01)
    with pytest.raises(KeyError):
        index.embedding(5)
    shuffled = LocalIndex(PARAMS, DIM)
    shuffled.add([30, 10, 20], memories[:3])
    np.testing.assert_allclose(shuffled.embedding(10), memories[1], atol=0.01)
    with pytest.raises(KeyError):
        shuffled.embedding(15)


def test_rows_must_be_new(memories: np.ndarray) -> None:
    idx = LocalIndex(PARAMS, DIM)
    idx.add([1, 2, 3], memories[:3])
    for rows in ([3], [4, 4], [0, 2]):
        with pytest.raises(ValueError, match="row"):
            idx.add(rows, memories[:len(rows)])
    assert len(idx) == 3
    idx.add([0], memories[3:4])
    assert len(idx) == 4


def test_bad_shapes_are_refused(memories: np.ndarray) -> None:
    idx = LocalIndex(PARAMS, DIM)
    with pytest.raises(ValueError, match="expected 2 rows"):
        idx.add([1, 2], memories[:3])
    with pytest.raises(ValueError, match="embeddings"):
        idx.add([1], np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="int8"):
        idx.add_compact([1], np.zeros((1, DIM), np.int16), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="shape"):
        idx.search(np.zeros(DIM + 1, np.float32), 3)
    with pytest.raises(ValueError, match="NaN"):
        idx.search(np.full(DIM, np.nan, np.float32), 3)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint16, st.integers(1, 400), elements=st.integers(0, 384)),
       st.integers(1, 400))
def test_smallest_keeps_every_distance_below_the_cut(dist: np.ndarray, count: int) -> None:
    picked = _smallest(dist, count)
    assert len(picked) >= min(count, len(dist))
    assert list(picked) == sorted(set(picked.tolist()))
    rest = np.setdiff1d(np.arange(len(dist)), picked)
    if len(rest):
        assert dist[picked].max() < dist[rest].min()
        assert np.count_nonzero(dist < dist[picked].max()) < count


# compact ----------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 50)),
                  elements=st.floats(-1, 1, width=32)))
def test_pack_unpack_round_trip(x: np.ndarray) -> None:
    codes, scales = compact.to_int8(x)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    np.testing.assert_allclose(codes * scales[:, None], x, atol=float(scales.max()) / 2 + 1e-7)
    for row, scale in zip(codes, scales, strict=True):
        b = compact.pack(row, float(scale))
        assert len(b) == compact.packed_size(x.shape[1])
        back, back_scale = compact.unpack(b, x.shape[1])
        assert np.array_equal(back, row) and back_scale == scale


def test_unpack_refuses_a_wrong_length() -> None:
    b = compact.pack(np.zeros(8, np.int8), 0.5)
    for bad in (b[:-1], b + b"\0", b""):
        with pytest.raises(ValueError, match="bytes"):
            compact.unpack(bad, 8)
    with pytest.raises(ValueError, match="scale"):
        compact.unpack(b"\xff\xff\xff\xff" + bytes(8), 8)  # NaN


def test_to_int8_handles_zero_and_refuses_nan() -> None:
    codes, scales = compact.to_int8(np.zeros((2, 4), np.float32))
    assert not codes.any() and not scales.any()
    with pytest.raises(ValueError, match="NaN"):
        compact.to_int8(np.full((1, 4), np.nan, np.float32))
