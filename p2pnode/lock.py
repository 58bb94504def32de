"""One daemon per state directory, enforced with an flock on `spore.lock`.

The lock is the flock, never the file's contents: a lock file left by a
dead daemon, truncated or full of garbage is simply taken over. The pid
written into it only makes the "already running" message more useful.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

from p2pnode.errors import AlreadyRunning, StateError

LOCK_FILE = "spore.lock"
_PID_BYTES = 32


class StateLock:
    """Held for the daemon's lifetime; released by the kernel if it dies."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        # O_NOFOLLOW and O_NONBLOCK: a symlink is never followed (and truncated), a
        # FIFO never blocks the start.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open the lock file {self.path}: {exc.strerror}; "
                             "if it is not a plain file, remove it") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError(f"the lock file {self.path} is not a plain file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise AlreadyRunning(
                f"another spore daemon (pid {holder}) is already using the state directory "
                f"{self.path.parent}; stop it first (or use another --state-dir)"
            ) from None
        # Only a hint for the message above: a full disk must not stop the daemon.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> str:
    """The holder's pid as written, or "unknown" for anything else."""
    try:
        text = os.pread(fd, _PID_BYTES, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return text if text.isdigit() and len(text) < 12 else "unknown"
