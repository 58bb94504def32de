"""The harness's fake encoder passes the real encoder's contract
(tests/test_encoder.py: the same test functions, run on the fake) where it is
not about the model itself (its file, its hash, its thread count)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.harness import DIM, FakeEncoder
from tests.test_encoder import (
    SENTENCES,
    test_batch_equals_one_by_one_in_order,
    test_empty_input,
    test_paraphrases_are_closer_than_unrelated,
    test_text_longer_than_the_model_window_is_truncated,
)

__all__ = ["test_batch_equals_one_by_one_in_order", "test_empty_input",
           "test_paraphrases_are_closer_than_unrelated",
           "test_text_longer_than_the_model_window_is_truncated"]


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()


def test_shape_dtype_and_unit_norm(encoder: FakeEncoder) -> None:
    vectors = encoder.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), DIM) and encoder.dim == DIM
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_text_gives_the_same_vector_in_any_encoder_and_batch() -> None:
    one, two = FakeEncoder(), FakeEncoder()
    np.testing.assert_array_equal(one.embed(SENTENCES), two.embed(SENTENCES[::-1])[::-1])


def test_the_same_words_in_another_case_and_marks_are_one_question() -> None:
    a, b, c = FakeEncoder().embed(["How do I install Debian?", "how do i install debian",
                                   "How do I remove Debian?"])
    assert float(a @ b) > 0.9999
    assert float(a @ c) < 0.9
