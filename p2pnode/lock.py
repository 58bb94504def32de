"""One daemon per state directory, enforced with an flock on `spore.lock`."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from p2pnode.errors import AlreadyRunning, StateError

LOCK_FILE = "spore.lock"


class StateLock:
    """Held for the daemon's lifetime; released by the kernel if it dies."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot create {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another spore daemon (pid {holder}) is already using the state directory "
                f"{self.path.parent}; stop it first (or use another --state-dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
