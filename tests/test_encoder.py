"""The real sentence encoder (no mocks): built by scripts/setup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.encoder import MODEL_NAME, Encoder, EncoderError, load_encoder
from agents.model_build import MODEL_SHA256

SENTENCES = [
    "How do I install Debian?",
    "What is the installation procedure for Debian?",
    "My cat likes fish",
    "The kernel panicked after the upgrade to a new release.",
    "Peers exchange signed records over UDP.",
    "",
    "A much longer sentence that goes on and on about package management, "
    "dependencies, mirrors and the many ways apt resolves conflicts between them.",
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder()


def test_shape_dtype_and_unit_norm(encoder: Encoder) -> None:
    vectors = encoder.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.dim == 384
    assert encoder.model_name == MODEL_NAME


def test_paraphrases_are_closer_than_unrelated(encoder: Encoder) -> None:
    install, procedure, cat = encoder.embed(SENTENCES[:3])
    assert float(install @ procedure) > float(install @ cat) + 0.3
    assert float(install @ procedure) > float(procedure @ cat) + 0.3


def test_batch_equals_one_by_one_in_order(encoder: Encoder) -> None:
    batched = encoder.embed(SENTENCES, batch_size=3)
    single = np.vstack([encoder.embed([text]) for text in SENTENCES])
    cosines = np.sum(batched * single, axis=1)
    assert cosines.min() > 0.999


def test_thread_count_does_not_change_vectors(encoder: Encoder) -> None:
    # Peers on different hardware must derive the same keys from the same text.
    two_threads = load_encoder(threads=2)
    np.testing.assert_array_equal(two_threads.embed(SENTENCES), encoder.embed(SENTENCES))


def test_text_longer_than_the_model_window_is_truncated(encoder: Encoder) -> None:
    vectors = encoder.embed(["debian " * 2000, "debian " * 300])
    assert float(vectors[0] @ vectors[1]) > 0.999


def test_empty_input(encoder: Encoder) -> None:
    vectors = encoder.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_model_hash_is_pinned(encoder: Encoder) -> None:
    assert encoder.model_sha256 == MODEL_SHA256


def test_missing_model_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.onnx"
    with pytest.raises(EncoderError, match=str(missing)):
        load_encoder(missing)
