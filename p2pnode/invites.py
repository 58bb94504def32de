"""The invitations this spore handed out and not yet redeemed (DESIGN.md 5b).

`spore invite` makes a one-time token; the joiner shows it at the peer route
``join`` and this store redeems it once. Only the token's SHA-256 is kept
(a copy of the state directory invites nobody), in one small JSON file
written atomically, owner-only. Time is passed in.

A redeemed or expired token is remembered for a while so that its holder is
told *why* it is refused (``invite_used``, ``invite_expired``) rather than
``invite_unknown``; the file stays bounded all the same.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from p2pnode.errors import StateError
from p2pnode.files import write_atomic
from p2pnode.records import RecordError

__all__ = ["MAX_ENTRIES", "MAX_PENDING", "TOKEN_BYTES", "Invites", "InvitesFull"]

TOKEN_BYTES = 16
MAX_PENDING = 256  # invitations not yet redeemed nor expired
MAX_ENTRIES = 1024  # with the used and expired ones remembered for their reason
REMEMBER_MS = 7 * 86_400_000  # how long after its expiry a token is still named
_VERSION = 1


class InvitesFull(StateError):
    """MAX_PENDING invitations are pending: HTTP 409 until some are used or expire."""

    status = 409


@dataclass(frozen=True)
class _Entry:
    digest: str  # sha256(token), hex
    expires_ms: int
    may_invite: bool
    used_ms: int | None = None


def _digest(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


class Invites:
    """Pending invitations, persisted at `path` (missing: none; corrupt: StateError)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[_Entry] = _load(path)

    def pending(self, now_ms: int) -> int:
        return sum(1 for e in self._entries if e.used_ms is None and e.expires_ms > now_ms)

    def create(self, *, may_invite: bool, ttl_s: int, now_ms: int) -> bytes:
        """A new one-time token, valid for `ttl_s` seconds from `now_ms`."""
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self._prune(now_ms, room=1)
        if self.pending(now_ms) >= MAX_PENDING:
            raise InvitesFull(f"{MAX_PENDING} invitations are pending already: wait until "
                              "some are used or expire")
        token = os.urandom(TOKEN_BYTES)
        self._entries.append(_Entry(_digest(token), now_ms + ttl_s * 1000, may_invite))
        self._save()
        return token

    def redeem(self, token: bytes, now_ms: int) -> bool:
        """Use `token` once; returns whether its holder may invite in turn.
        RecordError reason ``invite_unknown``, ``invite_expired`` or ``invite_used``."""
        found = self._find(token)
        if found is None:
            raise RecordError("invite_unknown", "no such invitation (mistyped, or not "
                              "made by this spore)")
        entry = self._entries[found]
        if entry.used_ms is not None:
            raise RecordError("invite_used", "this invitation was used already: ask for "
                              "a new one (`spore invite`)")
        if entry.expires_ms <= now_ms:
            raise RecordError("invite_expired", "this invitation has expired: ask for a "
                              "new one (`spore invite`)")
        self._entries[found] = _Entry(entry.digest, entry.expires_ms, entry.may_invite, now_ms)
        self._prune(now_ms)
        self._save()
        return entry.may_invite

    def _find(self, token: bytes) -> int | None:
        """The entry of `token`: every digest compared in constant time."""
        want = _digest(token).encode()
        found = None
        for i, entry in enumerate(self._entries):
            if hmac.compare_digest(entry.digest.encode(), want):
                found = i
        return found

    def _prune(self, now_ms: int, room: int = 0) -> None:
        """Forget what is long expired, and beyond MAX_ENTRIES - `room` entries
        the used and expired ones."""
        kept = [e for e in self._entries if e.expires_ms + REMEMBER_MS > now_ms]
        # Over the bound, forget the used and expired first (oldest first):
        # a pending invitation is only dropped by its expiry.
        spare = sorted((e for e in kept if e.used_ms is not None or e.expires_ms <= now_ms),
                       key=lambda e: e.expires_ms)
        drop = {id(e) for e in spare[:max(0, len(kept) - MAX_ENTRIES + room)]}
        self._entries = [e for e in kept if id(e) not in drop]

    def _save(self) -> None:
        data = {"version": _VERSION, "invites": [asdict(e) for e in self._entries]}
        write_atomic(self.path, json.dumps(data, separators=(",", ":")).encode(), private=True)


def _load(path: Path) -> list[_Entry]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise ValueError(f"not version {_VERSION} of the invitations file")
        items = data["invites"]
        if not isinstance(items, list) or len(items) > MAX_ENTRIES:
            raise ValueError(f"'invites' must be a list of at most {MAX_ENTRIES}")
        return [_entry(item) for item in items]
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{path} is corrupt ({exc}); the invitations pending in it cannot "
                         "be read: move it away to start with none (they stop working)") from exc


def _entry(item: Any) -> _Entry:
    if not isinstance(item, dict) or set(item) != {"digest", "expires_ms", "may_invite",
                                                   "used_ms"}:
        raise ValueError("an invitation entry has other fields")
    digest, expires, may, used = (item["digest"], item["expires_ms"], item["may_invite"],
                                  item["used_ms"])
    ok_digest = isinstance(digest, str) and len(digest) == 64 and all(
        c in "0123456789abcdef" for c in digest)
    if not ok_digest or not _time(expires) or not isinstance(may, bool) \
            or not (used is None or _time(used)):
        raise ValueError("an invitation entry has a malformed field")
    return _Entry(digest, expires, may, used)


def _time(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
