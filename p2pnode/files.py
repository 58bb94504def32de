"""Small state files written whole: atomically, durably, with a clear error.

The DNA and its chain, a member's pass, pending invitations: each is
replaced by writing a temporary file beside it, fsyncing it, renaming it
over the old one and fsyncing the directory, so a crash leaves the old file
or the new one, never a mix. Private files (secrets) are made 0600 before a
byte is written.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from p2pnode.errors import DiskFull, StateError

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Replace `path` by `data`; DiskFull or StateError naming the file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as fh:
            if private:
                os.fchmod(fh.fileno(), 0o600)  # an old tmp may have had another mode
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        kind = DiskFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else StateError
        raise kind(f"cannot write {path}: {exc.strerror or exc}") from exc
