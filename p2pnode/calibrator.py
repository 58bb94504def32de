"""The spore's confidence, kept honest by the people who rate its answers.

An answer's confidence claims P(its top answer is right). Every rating of an
answer is the outcome of that claim (up: right, down: not), so each spore
refits its calibration (`agents.consensus.fit_calibration`, a logistic
regression pulled toward the prior fitted on the Debian FAQ) on its last
SAMPLES rated answers, every REFIT_EVERY ratings. Votes and agents move the
scores as the swarm learns; the calibration follows them.

The rated samples are kept in `calibration.json` in the state directory (a few
dozen KB), rewritten whole: the first snapshot offered, then one every
SAVE_EVERY ratings (each refit offers one; writing each, every REFIT_EVERY
ratings, cost ~3.5 KiB of disk a rating once SAMPLES were in), and what is
left at `flush` (close). A crash loses the samples of at most SAVE_EVERY
ratings: the fit starts from the samples before them. A file that cannot be
read is set aside as `calibration.json.bad` with a warning, and the spore
starts again from the prior: nothing else depends on it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from agents.consensus import PRIOR, Calibration, fit_calibration

log = logging.getLogger("spore.calibration")

FILE = "calibration.json"
SAMPLES = 1000  # rated answers the calibration is fitted on (the newest)
REFIT_EVERY = 10  # ratings between refits
SAVE_EVERY = 100  # ratings between two writes of the samples
PENDING = 4096  # answers whose scores are remembered until rated


MAX_FILE_BYTES = 1 << 20  # SAMPLES rows are ~40 KB
SCORE_LIMIT = 100.0  # scores are cosines plus fitness terms, well inside this


def _read_samples(path: Path) -> list[tuple[float, float, bool]]:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"over {MAX_FILE_BYTES} bytes")
    raw = json.loads(path.read_text(encoding="utf-8"))
    samples = [(float(t), float(r), bool(up)) for t, r, up in raw["samples"]]
    if not all(abs(t) <= SCORE_LIMIT and abs(r) <= SCORE_LIMIT for t, r, _ in samples):
        raise ValueError(f"a sample is not a finite score within ±{SCORE_LIMIT:g}")
    return samples[-SAMPLES:]


class Calibrator:
    """Not thread-safe: the event loop owns it (a refit is a 3-parameter fit)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.current: Calibration = PRIOR
        self.samples: deque[tuple[float, float, bool]] = deque(maxlen=SAMPLES)
        self._pending: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._since_fit = 0
        self.refits = 0
        self._rated = 0  # ratings taken, all told
        self._saved_at: int | None = None  # `_rated` at the last write (None: none yet)
        self._unsaved: bytes | None = None  # the newest snapshot not written

    def load(self) -> None:
        """Take the samples kept in `path`; an unreadable file is set aside with a
        warning and the prior is used: never a reason not to start."""
        if self.path is None or not os.path.lexists(self.path):
            return
        try:
            self.samples.extend(_read_samples(self.path))
            current = fit_calibration(list(self.samples))
            if not all(math.isfinite(v) for v in (current.bias, current.top, current.margin)):
                raise ValueError("the fit on its samples is not finite")
            self.current = current
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
            self.samples.clear()
            self.current = PRIOR
            bad = self.path.with_name(self.path.name + ".bad")
            try:
                os.replace(self.path, bad)
                kept = f"kept as {bad.name}"
            except OSError as err:
                kept = f"left in place ({err.strerror})"
            log.warning("%s is unreadable (%s); %s, confidence starts again from the prior",
                        self.path, exc, kept)

    def said(self, answer_id: str, top: float, runner_up: float) -> float:
        """The confidence of an answer; its scores are kept until it is rated."""
        self._pending[answer_id] = (top, runner_up)
        while len(self._pending) > PENDING:
            self._pending.popitem(last=False)
        return self.current(top, runner_up)

    def rated(self, answer_id: str, up: bool) -> bool:
        """Take an answer's first rating as an outcome; True when a refit is due."""
        scores = self._pending.pop(answer_id, None)
        if scores is None:
            return False
        self.samples.append((*scores, up))
        self._since_fit += 1
        self._rated += 1
        return self._since_fit >= REFIT_EVERY

    def refit(self) -> None:
        self.current = fit_calibration(list(self.samples))
        self._since_fit = 0
        self.refits += 1

    def snapshot(self) -> bytes:
        return json.dumps({"samples": [[round(t, 6), round(r, 6), up]
                                       for t, r, up in self.samples]}).encode()

    def save(self, data: bytes) -> None:
        """Offer a snapshot (db thread): written if it is the first or
        SAVE_EVERY ratings came since the last write, else kept for `flush`."""
        rated = self._rated
        if self._saved_at is not None and rated - self._saved_at < SAVE_EVERY:
            self._unsaved = data
            return
        self._saved_at = rated
        self._unsaved = None if self._write(data) else data  # a full disk: tried again later

    def flush(self) -> None:
        """Write the snapshot kept by `save`, if any (at close)."""
        data, self._unsaved = self._unsaved, None
        if data is not None:
            self._saved_at = self._rated
            self._write(data)

    def _write(self, data: bytes) -> bool:
        """Whole or not at all; whether it was written."""
        if self.path is None:
            return True
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # the last file stays: nothing else depends on it
            with contextlib.suppress(OSError):
                tmp.unlink()
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            log.warning("cannot write %s: %s%s", self.path, exc.strerror,
                        f"; free space on the filesystem of {self.path.parent}" if full else "")
            return False
        return True

    def status(self) -> dict[str, Any]:
        c = self.current
        return {"bias": round(c.bias, 4), "top": round(c.top, 4), "margin": round(c.margin, 4),
                "samples": len(self.samples), "refits": self.refits,
                "right": sum(up for _, _, up in self.samples)}
