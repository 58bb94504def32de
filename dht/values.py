"""The SQLite store of the DHT values a node holds for others.

Every value is verified and merged before it is written (dht.codec), so the
file only ever holds canonical, verified values; a refused value (forged,
malformed, over quota) never reaches it, nor does an index entry dated
beyond now + dht.codec.MAX_SKEW_MS.

These are replicas: the author keeps the durable copy and republishes it, so
the file runs WAL with ``synchronous=NORMAL``. A value survives a crash of
the process; the last few writes may roll back on power loss, and the next
republish restores them.

Quotas count value bytes. A value is charged to the peer that last put it:
that peer is the one keeping it alive, since expiry counts from the last
refresh.

Not thread-safe: one thread owns a ValueStore (the DHT's storage worker).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from dht.codec import KIND_BUCKET, merge_values, validate_value
from p2pnode.errors import SporeError, StateError

__all__ = ["DEFAULT_PER_PUBLISHER_BYTES", "DEFAULT_TOTAL_BYTES", "QuotaExceeded", "ValueStore"]

DEFAULT_PER_PUBLISHER_BYTES = 16 * 1024 * 1024
DEFAULT_TOTAL_BYTES = 256 * 1024 * 1024
_MAX_PUBLISHER_BYTES = 64  # node ids are 20 or 32 bytes
# The page cache, KiB (SQLite's default: 2,000): a spore's idle RSS is
# measured by scripts/bench/footprint.py; reads miss into the OS page cache.
CACHE_KIB = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dht_values(
    key BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    value BLOB NOT NULL,
    publisher BLOB NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    refreshed_ms INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dht_values_refreshed ON dht_values(refreshed_ms);
"""


class QuotaExceeded(SporeError):
    """Storing a value would put its publisher or the whole store over quota."""


class ValueStore:
    """Verified DHT values on a SQLite file, merged on put, capped, expiring."""

    def __init__(self, path: Path, *, per_publisher_bytes: int = DEFAULT_PER_PUBLISHER_BYTES,
                 total_bytes: int = DEFAULT_TOTAL_BYTES) -> None:
        self.path = path
        self.per_publisher_bytes = per_publisher_bytes
        self.total_bytes = total_bytes
        self._db = self._connect()
        # Usage is kept in memory (one owner) so a put costs no SUM() scan.
        self._used: dict[bytes, int] = defaultdict(int)
        self._total = 0
        self._load_usage()
        # What the holder will not keep (the daemon's: forgotten memories):
        # (key, value) -> the value to store, or VerifyError. Runs first.
        self.screen: Callable[[bytes, bytes], bytes] | None = None

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the DHT value store {self.path}: {exc}") from exc
        return db

    def _load_usage(self) -> None:
        self._used.clear()
        rows = self._query("SELECT publisher, SUM(size) FROM dht_values GROUP BY publisher")
        for publisher, size in rows:
            assert isinstance(publisher, bytes) and isinstance(size, int)
            self._used[publisher] = size
        self._total = sum(self._used.values())

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"DHT value store {self.path}: {exc}") from exc

    def _row(self, key32: bytes) -> tuple[bytes, bytes, int] | None:
        """(value, publisher, refreshed_ms) stored under `key32`."""
        rows = self._query(
            "SELECT value, publisher, refreshed_ms FROM dht_values WHERE key = ?", (key32,))
        if not rows:
            return None
        value, publisher, refreshed = rows[0]
        assert isinstance(value, bytes) and isinstance(publisher, bytes)
        assert isinstance(refreshed, int)
        return value, publisher, refreshed

    def put(self, key32: bytes, data: bytes, publisher: bytes, now_ms: int) -> bool:
        """Verify, merge with what is stored, check quotas, store; refreshes the key.

        Returns whether the stored value changed (False: a pure refresh).
        Raises VerifyError (refused value) or QuotaExceeded; either way the
        store is left as it was.
        """
        if not 0 < len(publisher) <= _MAX_PUBLISHER_BYTES:
            raise ValueError("publisher must be a node id")
        if self.screen is not None:
            data = self.screen(key32, data)
        old = self._row(key32)
        if old is None:
            kind, value = validate_value(key32, data, now_ms=now_ms)
        else:
            value = merge_values(key32, old[0], data, now_ms=now_ms)
            kind = "bucket" if value[:1] == KIND_BUCKET else "content"
        self._check_quota(publisher, len(value), old)
        self._write(key32, kind, value, publisher, now_ms, old)
        return old is None or value != old[0]

    def _check_quota(self, publisher: bytes, size: int,
                     old: tuple[bytes, bytes, int] | None) -> None:
        old_size = 0 if old is None else len(old[0])
        mine = self._used.get(publisher, 0) - (old_size if old and old[1] == publisher else 0)
        if mine + size > self.per_publisher_bytes:
            raise QuotaExceeded(f"publisher {publisher.hex()[:16]} would hold "
                                f"{mine + size} bytes, quota {self.per_publisher_bytes}")
        if self._total - old_size + size > self.total_bytes:
            raise QuotaExceeded(f"the store would hold {self._total - old_size + size} "
                                f"bytes, quota {self.total_bytes}")

    def _write(self, key32: bytes, kind: str, value: bytes, publisher: bytes, now_ms: int,
               old: tuple[bytes, bytes, int] | None) -> None:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if old is None:
                    self._db.execute(
                        "INSERT INTO dht_values VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key32, kind, value, publisher, now_ms, now_ms, len(value)))
                else:
                    self._db.execute(
                        "UPDATE dht_values SET kind = ?, value = ?, publisher = ?, "
                        "refreshed_ms = ?, size = ? WHERE key = ?",
                        (kind, value, publisher, max(now_ms, old[2]), len(value), key32))
        except sqlite3.Error as exc:
            raise StateError(f"DHT value store {self.path}: {exc}") from exc
        if old is not None:
            self._used[old[1]] -= len(old[0])
            self._total -= len(old[0])
        self._used[publisher] += len(value)
        self._total += len(value)

    def get(self, key32: bytes) -> bytes | None:
        row = self._row(key32)
        return None if row is None else row[0]

    def narrow(self, key32: bytes, value: bytes | None) -> None:
        """Replace a held value by a part of it (a bucket without some entries,
        canonical already), or drop it (None): what the holder must no longer
        keep. The publisher and times stay; a merge could only add."""
        old = self._row(key32)
        if old is None:
            return
        try:
            with self._db:
                if value is None:
                    self._db.execute("DELETE FROM dht_values WHERE key = ?", (key32,))
                else:
                    self._db.execute("UPDATE dht_values SET value = ?, size = ? WHERE key = ?",
                                     (value, len(value), key32))
        except sqlite3.Error as exc:
            raise StateError(f"DHT value store {self.path}: {exc}") from exc
        delta = (0 if value is None else len(value)) - len(old[0])
        self._used[old[1]] += delta
        self._total += delta

    def expire(self, now_ms: int, ttl_ms: int) -> int:
        """Drop the values nobody refreshed within `ttl_ms`; returns how many."""
        try:
            with self._db:
                cur = self._db.execute("DELETE FROM dht_values WHERE refreshed_ms < ?",
                                       (now_ms - ttl_ms,))
        except sqlite3.Error as exc:
            raise StateError(f"DHT value store {self.path}: {exc}") from exc
        if cur.rowcount:
            self._load_usage()
        return cur.rowcount

    def keys(self) -> list[bytes]:
        return [k for (k,) in self._query("SELECT key FROM dht_values ORDER BY key")
                if isinstance(k, bytes)]

    def stats(self) -> dict[str, int]:
        """count and bytes, overall and per kind (bucket_count, content_bytes, …)."""
        out = {"count": 0, "bytes": 0, "bucket_count": 0, "bucket_bytes": 0,
               "content_count": 0, "content_bytes": 0}
        rows = self._query("SELECT kind, COUNT(*), SUM(size) FROM dht_values GROUP BY kind")
        for kind, count, size in rows:
            assert isinstance(count, int) and isinstance(size, int)
            out[f"{kind}_count"] = count
            out[f"{kind}_bytes"] = size
            out["count"] += count
            out["bytes"] += size
        return out

    def close(self) -> None:
        self._db.close()
