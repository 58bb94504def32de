"""The confidence is refitted on the ratings people give (p2pnode.calibrator)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.consensus import PRIOR, Calibration, fit_calibration
from p2pnode.calibrator import REFIT_EVERY, SAMPLES, SAVE_EVERY, Calibrator


def _stream(truth: Calibration, n: int, seed: int = 0) -> list[tuple[float, float, bool]]:
    """Rated answers whose outcomes follow `truth`."""
    rng = np.random.default_rng(seed)
    top = rng.uniform(0.2, 1.4, n)
    runner_up = top - rng.exponential(0.05, n)
    p = np.array([truth(t, r) for t, r in zip(top, runner_up, strict=True)])
    return [(float(t), float(r), bool(u)) for t, r, u in
            zip(top, runner_up, rng.random(n) < p, strict=True)]


def _brier(cal: Calibration, samples: list[tuple[float, float, bool]]) -> float:
    return float(np.mean([(cal(t, r) - up) ** 2 for t, r, up in samples]))


def test_no_ratings_keep_the_prior() -> None:
    assert fit_calibration([]) == PRIOR


def test_a_few_ratings_move_it_a_little_many_decide() -> None:
    truth = Calibration(bias=-4.0, top=6.0, margin=20.0)  # unlike the prior
    few, many = _stream(truth, 10), _stream(truth, 2000, seed=1)
    near = fit_calibration(few)
    assert np.abs(near.vector() - PRIOR.vector()).max() < 5.0
    fitted = fit_calibration(many)
    held_out = _stream(truth, 2000, seed=2)
    assert _brier(fitted, held_out) < _brier(PRIOR, held_out) - 0.02
    assert _brier(fitted, held_out) < _brier(truth, held_out) + 0.01


def test_one_outcome_forever_stays_finite() -> None:
    fitted = fit_calibration([(0.5, 0.4, True)] * 5000)
    assert np.isfinite(fitted.vector()).all()
    assert fitted(0.5, 0.4) > 0.95


def test_non_finite_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        fit_calibration([(float("nan"), 0.1, True)])


def test_an_answer_counts_once_and_refits_come_in_steps(tmp_path: Path) -> None:
    cal = Calibrator(tmp_path / "calibration.json")
    cal.said("a", 0.9, 0.5)
    assert cal.rated("a", True) is False and len(cal.samples) == 1
    assert cal.rated("a", False) is False and len(cal.samples) == 1  # rated again: not counted
    assert cal.rated("never-asked", True) is False
    due = []
    for i in range(REFIT_EVERY):
        cal.said(f"q{i}", 0.6, 0.55)
        due.append(cal.rated(f"q{i}", False))
    assert due[-1] is True and not any(due[:-2])


def test_samples_persist_and_a_bad_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    cal = Calibrator(path)
    for i, (t, r, up) in enumerate(_stream(Calibration(-4.0, 6.0, 20.0), 50)):
        cal.said(str(i), t, r)
        cal.rated(str(i), up)
    cal.refit()
    cal.save(cal.snapshot())
    again = Calibrator(path)
    again.load()
    assert [up for _, _, up in again.samples] == [up for _, _, up in cal.samples]
    assert np.asarray([s[:2] for s in again.samples]) == pytest.approx(
        np.asarray([s[:2] for s in cal.samples]), abs=1e-5)
    assert again.current.vector() == pytest.approx(cal.current.vector(), abs=1e-3)

    path.write_text('{"samples": [[0.5, "x"')  # torn or corrupt
    broken = Calibrator(path)
    broken.load()
    assert broken.current == PRIOR and not broken.samples
    assert (tmp_path / "calibration.json.bad").exists() and not path.exists()


def test_only_the_newest_samples_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"samples": [[0.5, 0.4, i % 2 == 0]
                                            for i in range(SAMPLES + 50)]}))
    cal = Calibrator(path)
    cal.load()
    assert len(cal.samples) == SAMPLES


def test_samples_are_written_every_save_every_ratings_and_at_flush(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    cal = Calibrator(path)

    def rate(n: int) -> None:
        for _ in range(n):
            k = str(len(cal.samples))
            cal.said(k, 0.6, 0.5)
            cal.rated(k, True)

    def stored() -> int:
        return len(json.loads(path.read_text())["samples"])

    rate(REFIT_EVERY)
    cal.save(cal.snapshot())  # the first snapshot is written
    assert stored() == REFIT_EVERY
    rate(SAVE_EVERY - 1)
    cal.save(cal.snapshot())  # kept, not written
    assert stored() == REFIT_EVERY
    rate(1)
    cal.save(cal.snapshot())
    assert stored() == REFIT_EVERY + SAVE_EVERY
    rate(3)
    cal.save(cal.snapshot())
    assert stored() == REFIT_EVERY + SAVE_EVERY
    cal.flush()  # at close
    assert stored() == REFIT_EVERY + SAVE_EVERY + 3
    cal.flush()  # nothing left: nothing written
    assert stored() == REFIT_EVERY + SAVE_EVERY + 3
