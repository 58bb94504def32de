"""SQLite storage of memories, votes and given answers (WAL).

One thread owns a Storage (the daemon's database worker); nothing here is
async. Memories are written through a connection with ``synchronous=FULL``:
a teach is acknowledged only after its transaction is in the WAL and
fsynced, so it survives kill -9 and (on honest storage) power loss. Votes
are the gossip store's (p2pnode.gossip keeps every vote, this spore's own
among them, and their voters and peers hold them too; one fsync per gossiped
vote was the db thread's whole time under a flood): the votes table here
holds only this spore's own votes that no gossip store keeps (a spore run
without one, or a vote its quota refused), durably as memories are, and
those an older version stored (read at start).
Answers are a convenience for `spore rate`: an answer's row is kept in
memory and written in groups (`ANSWERS_BATCH` rows, or `ANSWERS_FLUSH_S`
after the first one not written, and at close) with ``NORMAL``, so an ask
costs a fraction of a page instead of a commit of two (footprint.py). A
rating finds its answer in memory until then. What a kill -9 can lose: the
answer ids of the last few seconds (at most ANSWERS_BATCH asks), so a
`spore rate` of one of them after the restart is refused (404); never a
memory and never a rating (those are durable before the API answers). A
power loss may lose the last groups written too. The text of a rated
question (kept for `spore export --rated` only) goes with the same groups:
a kill -9 may lose the last few seconds of those texts, never the rating
(its vote is durable before the API answers); a rating wrote two synced
commits before (25 KiB a rating, scripts/bench/footprint.py).

Every SQLite file of the spore (through `connect_wal` and `transaction`):
a write rolls back on any exception and leaves the connection usable;
integers are bounded before they are bound (`check_int`); SQLite's errors
become ours and name the file and what to do (`fault`: DiskFull, HTTP 507, for
a full disk; StateError for a damaged file); a new database is built beside
its name and renamed into place, so one a spore made is never empty, and an
empty or foreign file is refused, never started over.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np

from crdt.votes import Counter
from p2pnode.errors import BadRequest, DiskFull, SporeError, StateError, VerifyError
from p2pnode.identity import KEY_FILE
from p2pnode.records import MemoryRecord, VoteRecord, decode_memory

DB_FILE = "spore.sqlite3"
ANSWERS_BATCH = 64  # answer rows written in one transaction
ANSWERS_FLUSH_S = 5.0  # or this long after the first one not written

_SCHEMA = """
CREATE TABLE IF NOT EXISTS memories(
    row INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    record BLOB NOT NULL,
    author BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    origin TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    dedupe BLOB NOT NULL UNIQUE,
    scale REAL NOT NULL,
    emb BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS votes(
    memory BLOB NOT NULL,
    voter BLOB NOT NULL,
    region BLOB NOT NULL,
    seq INTEGER NOT NULL,
    up INTEGER NOT NULL,
    down INTEGER NOT NULL,
    qvec BLOB NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY(memory, voter, region)
);
CREATE TABLE IF NOT EXISTS answers(
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    memory BLOB NOT NULL,
    row INTEGER NOT NULL,
    region BLOB NOT NULL,
    qvec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS forgotten(
    memory BLOB NOT NULL,
    author BLOB NOT NULL,
    tombstone BLOB,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY(memory, author)
);
CREATE TABLE IF NOT EXISTS rated(
    answer TEXT PRIMARY KEY,
    question TEXT NOT NULL,
    memory BLOB NOT NULL,
    up INTEGER NOT NULL,
    down INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
"""
FORGOTTEN_ROW = -1  # add_memories' row for a record refused: its memory was forgotten


@dataclass(frozen=True)
class MemoryRow:
    row: int
    id: bytes
    question: str
    answer: str
    origin: str
    author: bytes
    created_ms: int


@dataclass(frozen=True)
class StoredVote:
    row: int
    memory: bytes
    voter: bytes
    region: bytes
    counter: Counter
    qvec: bytes


@dataclass(frozen=True)
class Forgotten:
    """A memory this spore forgets for good: its `author`'s (b"": whoever wrote
    it, a local hide) with the author's signed `tombstone` (None for a hide)."""

    memory: bytes
    author: bytes
    tombstone: bytes | None
    at_ms: int


@dataclass(frozen=True)
class AnswerRow:
    id: str
    memory: bytes
    row: int
    region: bytes
    qvec: bytes


def dedupe_key(rec: MemoryRecord) -> bytes:
    """Same author, text and origin = the same memory, whenever it was taught."""
    h = hashlib.sha256(rec.author)
    for part in (rec.question, rec.answer, rec.origin):
        h.update(len(part).to_bytes(8, "big") + part.encode())
    return h.digest()


_ROW_COLS = "row, id, question, answer, origin, author, created_ms"


def _memories_by_rows(con: sqlite3.Connection, rows: Sequence[int]) -> dict[int, MemoryRow]:
    if not rows:
        return {}
    marks = ",".join("?" * len(rows))
    cur = con.execute(f"SELECT {_ROW_COLS} FROM memories WHERE row IN ({marks})", list(rows))
    return {r[0]: MemoryRow(*r) for r in cur}


MAX_INT = (1 << 63) - 1  # SQLite's INTEGER is a signed 64-bit number
SQLITE_HEADER = b"SQLite format 3\x00"
WHAT = "the spore's database"
log = logging.getLogger("spore.storage")

P = ParamSpec("P")
T = TypeVar("T")


def check_int(what: str, value: object, error: type[SporeError] = VerifyError) -> int:
    """`value` if SQLite can hold it, else `error`: binding a larger int raises
    OverflowError in the middle of a transaction."""
    if not isinstance(value, int):
        raise error(f"{what} is a {type(value).__name__}, not an integer")
    if not -MAX_INT - 1 <= value <= MAX_INT:  # never format it: str() of a huge int raises
        raise error(f"{what} is out of range ({value.bit_length()} bits; the limit is 2^63)")
    return value


# --- SQLite's errors as ours ----------------------------------------------------------


def _disk_full(path: Path, what: str) -> str:
    return (f"the disk is full: cannot write {what} {path}. Free space on the filesystem of "
            f"{path.parent} (see: df -h {path.parent}), then retry; nothing acknowledged "
            "was lost")


def _damaged(path: Path, what: str, why: str) -> str:
    return (f"{what} {path} is damaged ({why}). Stop the spore, then restore the file from a "
            f"backup, or move it aside with its -wal and -shm files to start with an empty "
            f"one (mv {path} {path}.damaged); a spore never deletes or replaces it itself")


def _empty(path: Path, what: str) -> str:
    key = path.parent / KEY_FILE
    before = (f"but this spore has run before ({key} exists)" if os.path.lexists(key)
              else "and a spore never leaves one empty")
    return (f"{what} {path} is empty (0 bytes) {before}: it was truncated or replaced. "
            f"Restore it from a backup, or move it aside to start with an empty one "
            f"(mv {path} {path}.empty); a spore never replaces a database that exists")


def fault(exc: sqlite3.Error, path: Path, what: str = "the database") -> SporeError:
    """The typed error for a SQLite failure on `path`: DiskFull when the disk
    (or the database's page limit) is full, a StateError naming the file and
    what to do when it is damaged or cannot be used."""
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF  # the primary result code
    if code == sqlite3.SQLITE_FULL:
        return DiskFull(_disk_full(path, what))
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StateError(_damaged(path, what, str(exc)))
    return StateError(f"{what} {path}: {exc}")


def _rollback(con: sqlite3.Connection) -> None:
    if con.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
        with suppress(sqlite3.Error):
            con.execute("ROLLBACK")


@contextmanager
def transaction(con: sqlite3.Connection, path: Path,
                what: str = "the database") -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT on an autocommit connection. On any exception
    (OverflowError, a failed COMMIT, SQLITE_FULL, …) it is rolled back and the
    connection is usable for the next write; SQLite's errors come out as
    `fault`'s. A transaction left open by earlier code is rolled back first:
    nothing in it was acknowledged, and it would refuse every later BEGIN."""
    _rollback(con)
    try:
        con.execute("BEGIN IMMEDIATE")
        yield con
        con.execute("COMMIT")
    except BaseException as exc:
        _rollback(con)
        if isinstance(exc, sqlite3.Error):
            raise fault(exc, path, what) from exc
        raise


def _faults(method: Callable[Concatenate[Storage, P], T]
            ) -> Callable[Concatenate[Storage, P], T]:
    """SQLite errors from a method of Storage, as ours."""

    def mapped(self: Storage, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise fault(exc, self.path, WHAT) from exc

    functools.update_wrapper(mapped, method)
    return mapped


# --- opening ---------------------------------------------------------------------------


def _check_file(path: Path, what: str) -> None:
    """A file that exists must already be a SQLite database: never start over."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{what} {path} is not a regular file; move it aside")
        if st.st_size == 0:
            raise StateError(_empty(path, what))
        with open(path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StateError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if header != SQLITE_HEADER:
        raise StateError(_damaged(path, what, "it does not start with the SQLite header"))


def _remove(path: Path) -> None:
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        with suppress(OSError):  # what stays in the way fails the connect, with a name
            (path.parent / name).unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path, schema: str, what: str) -> None:
    """A new database with `schema`, built beside `path` and put in place whole
    (so a database a spore made is never empty), never over a file that exists."""
    tmp = path.with_name(path.name + ".new")
    _remove(tmp)  # a creation cut short: nobody ever relied on it
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(schema)
        finally:
            con.close()  # the last connection checkpoints: all of it is in `tmp`
        _fsync(tmp)
        try:
            os.link(tmp, path)  # fails rather than replace a file made meanwhile
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: nothing there a moment ago
            os.replace(tmp, path)
        _fsync(path.parent)
    except sqlite3.Error as exc:
        raise fault(exc, path, what) from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(_disk_full(path, what)) from exc
        raise StateError(f"cannot create {what} {path}: {exc.strerror or exc}") from exc
    finally:
        _remove(tmp)


# Each connection's page cache, KiB (SQLite's default: 2,000): reads miss into
# the OS page cache, and the hot interior pages of a lookup fit; a spore keeps
# four connections (scripts/bench/footprint.py: idle RSS).
CACHE_KIB = 256


def connect_wal(path: Path, schema: str, synchronous: str = "NORMAL",
                what: str = "the database") -> sqlite3.Connection:
    """An autocommit SQLite connection in WAL mode with `schema` applied. A new
    file is created whole; one that exists must be a SQLite database (an empty
    or foreign file is refused, never started over); every failure is a
    StateError (DiskFull for a full disk) that names the file and what to do."""
    if os.path.lexists(path):
        _check_file(path, what)
    else:
        _create(path, schema, what)
    con: sqlite3.Connection | None = None
    try:
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={synchronous}")
        con.execute("PRAGMA busy_timeout=5000")
        con.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        con.executescript(schema)  # reads the schema page: a damaged one fails here
    except sqlite3.Error as exc:
        if con is not None:
            con.close()
        raise fault(exc, path, what) from exc
    return con


def quick_check(con: sqlite3.Connection, path: Path, what: str = "the database") -> None:
    """Read every page (PRAGMA quick_check); a StateError naming the file if one
    is damaged. It costs a read of the whole file: ~30 ms warm, ~0.7 s from a
    cold cache for 10k memories (42 MB) here, so it is not run at every start."""
    try:
        found = [str(r[0]) for r in con.execute("PRAGMA quick_check(3)")]
    except sqlite3.Error as exc:
        raise fault(exc, path, what) from exc
    if found != ["ok"]:
        raise StateError(_damaged(path, what, "; ".join(found)))


# --- the spore's database ------------------------------------------------------------


class Reader:
    """Read-only access to memories from a thread other than the storage's own,
    so that an ask fetches its answer in the same hop that ranked it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._con = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                        check_same_thread=False)
        except sqlite3.Error as exc:
            raise fault(exc, path, WHAT) from exc

    def held_by_rows(self, rows: Sequence[int]) -> dict[int, tuple[MemoryRow, np.ndarray]]:
        """The memories of some rows and the embeddings their signed records
        hold (float16, as every spore that holds or fetches the memory sees
        it), in one read. Read, not verified again: a record is verified
        before it is stored."""
        if not rows:
            return {}
        marks = ",".join("?" * len(rows))
        try:
            cur = self._con.execute(
                f"SELECT {_ROW_COLS}, record FROM memories WHERE row IN ({marks})", list(rows))
            return {r[0]: (MemoryRow(*r[:-1]), MemoryRecord.stored_vector(r[-1])) for r in cur}
        except sqlite3.Error as exc:
            raise fault(exc, self.path, WHAT) from exc

    def close(self) -> None:
        self._con.close()


class Storage:
    """The spore's database. Not thread-safe: one worker thread owns it."""

    def __init__(self, path: Path, *, answers_batch: int = ANSWERS_BATCH,
                 answers_flush_s: float = ANSWERS_FLUSH_S) -> None:
        self.path = path
        self.skipped_records = 0  # stored memories that no longer verify
        self.answers_batch, self.answers_flush_s = answers_batch, answers_flush_s
        # Answers not written yet (see the module's docstring), and the timer that
        # writes them; the lock also keeps the timer's thread and the owner's
        # apart on the answers' connection.
        self._answers: dict[str, tuple[AnswerRow, int]] = {}
        # Rated questions not written yet: answer id -> (question, memory, ups,
        # downs, last rated ms), written with the answers' next group.
        self._rated: dict[str, tuple[str, bytes, int, int, int]] = {}
        self._answers_lock = threading.Lock()
        self._answers_timer: threading.Timer | None = None
        self._closed = False
        self._durable = self._connect("FULL")
        try:
            self._fast = self._connect("NORMAL")
        except BaseException:
            self._durable.close()
            raise

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        return connect_wal(self.path, _SCHEMA, synchronous, WHAT)

    def _tx(self, con: sqlite3.Connection) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(con, self.path, WHAT)

    def check(self) -> None:
        """Every page readable (see `quick_check` for its cost), else StateError."""
        quick_check(self._durable, self.path, WHAT)

    def close(self) -> None:
        """Write the answers still in memory, then close (a failure to write
        them is logged: they were never more than a convenience)."""
        with self._answers_lock:
            if self._answers_timer is not None:
                self._answers_timer.cancel()
                self._answers_timer = None
            try:
                self._write_answers()
            except SporeError as exc:
                log.warning("%d answers not written at close: %s", len(self._answers), exc)
            self._closed = True
            self._fast.close()
            self._durable.close()

    # memories ---------------------------------------------------------
    @_faults
    def add_memories(
        self, items: Sequence[tuple[MemoryRecord, bytes, float]]
    ) -> list[tuple[int, bytes, bool]]:
        """Store (record, int8 embedding bytes, scale) items in one durable
        transaction. Returns (row, memory id, newly stored) per item; a memory
        already stored (same author, text and origin) keeps its first id."""
        for rec, _, _ in items:
            check_int("a memory's created time", rec.created_ms)
        out: list[tuple[int, bytes, bool]] = []
        with self._tx(self._durable) as con:
            for rec, emb, scale in items:
                if con.execute("SELECT 1 FROM forgotten WHERE memory=? AND author IN (?, x'')",
                               (rec.id, rec.author)).fetchone() is not None:
                    out.append((FORGOTTEN_ROW, rec.id, False))
                    continue
                key = dedupe_key(rec)
                old = con.execute("SELECT row, id FROM memories WHERE dedupe=?", (key,)).fetchone()
                if old is not None:
                    out.append((old[0], old[1], False))
                    continue
                cur = con.execute(
                    "INSERT INTO memories(id, record, author, created_ms, origin, question,"
                    " answer, dedupe, scale, emb) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (rec.id, rec.wire, rec.author, rec.created_ms, rec.origin, rec.question,
                     rec.answer, key, scale, emb),
                )
                out.append((int(cur.lastrowid or 0), rec.id, True))
        return out

    @_faults
    def index_rows(self, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Everything the in-memory index needs: rows, int8 (n, dim), scales."""
        cur = self._durable.execute("SELECT row, scale, emb FROM memories ORDER BY row")
        rows: list[int] = []
        scales: list[float] = []
        embs: list[bytes] = []
        for row, scale, emb in cur:
            rows.append(row)
            scales.append(scale)
            embs.append(emb)
        matrix = np.frombuffer(b"".join(embs), dtype=np.int8).reshape(len(rows), dim)
        return (np.asarray(rows, dtype=np.int64), matrix,
                np.asarray(scales, dtype=np.float32))

    _ROW_COLS = _ROW_COLS

    @_faults
    def memories_by_rows(self, rows: Sequence[int]) -> dict[int, MemoryRow]:
        return _memories_by_rows(self._durable, rows)

    def reader(self) -> Reader:
        """A read-only connection for another thread (WAL readers never block)."""
        return Reader(self.path)

    @_faults
    def memory_by_id(self, memory_id: bytes) -> MemoryRow | None:
        r = self._durable.execute(
            f"SELECT {self._ROW_COLS} FROM memories WHERE id=?", (memory_id,)).fetchone()
        return MemoryRow(*r) if r else None

    @_faults
    def memory_record(self, memory_id: bytes) -> bytes | None:
        r = self._durable.execute("SELECT record FROM memories WHERE id=?", (memory_id,)).fetchone()
        return bytes(r[0]) if r else None

    @_faults
    def records_by_author(self, author: bytes) -> list[MemoryRecord]:
        cur = self._durable.execute("SELECT record FROM memories WHERE author=? ORDER BY row",
                                    (author,))
        out = []
        for (wire,) in cur:
            try:
                out.append(decode_memory(bytes(wire)))
            except VerifyError as exc:  # stored by an older, laxer version: kept, not sent
                self.skipped_records += 1
                log.warning("not republishing a stored memory that no longer verifies: %s", exc)
        return out

    @_faults
    def list_memories(self, limit: int, offset: int) -> list[MemoryRow]:
        check_int("limit", limit, BadRequest)
        check_int("offset", offset, BadRequest)
        cur = self._durable.execute(
            f"SELECT {self._ROW_COLS} FROM memories ORDER BY row DESC LIMIT ? OFFSET ?",
            (limit, offset))
        return [MemoryRow(*r) for r in cur]

    @_faults
    def records_after(self, row: int, limit: int) -> list[tuple[int, bytes]]:
        """(row, signed record) of the memories after `row`, in row order (a page)."""
        cur = self._durable.execute("SELECT row, record FROM memories WHERE row > ? ORDER BY row"
                                    " LIMIT ?", (check_int("row", row, BadRequest), limit))
        return [(r, bytes(w)) for r, w in cur]

    # forgetting ---------------------------------------------------------
    @_faults
    def forget(self, marks: Sequence[Forgotten]) -> list[int]:
        """Keep the marks and drop what is held of their memories, in one
        durable transaction: the memory (its author's, or anybody's for a
        hide) and this spore's rated questions on it. Returns the rows dropped."""
        with self._answers_lock:  # rated questions kept in memory: written, then dropped
            if not self._closed:
                self._write_answers()
        dropped: list[int] = []
        with self._tx(self._durable) as con:
            for m in marks:
                con.execute("INSERT OR IGNORE INTO forgotten(memory, author, tombstone, at_ms)"
                            " VALUES (?,?,?,?)", (m.memory, m.author, m.tombstone,
                                                  check_int("a forget's time", m.at_ms)))
                cur = con.execute("DELETE FROM memories WHERE id=? AND (author=? OR ?=x'')"
                                  " RETURNING row", (m.memory, m.author, m.author))
                rows = [int(r[0]) for r in cur]
                if rows or not m.author:
                    con.execute("DELETE FROM rated WHERE memory=?", (m.memory,))
                dropped += rows
        return dropped

    @_faults
    def forgotten(self) -> list[tuple[bytes, bytes, bytes | None]]:
        """(memory, author or b"" for a hide, tombstone or None) of every mark."""
        cur = self._durable.execute("SELECT memory, author, tombstone FROM forgotten")
        return [(bytes(m), bytes(a), None if t is None else bytes(t)) for m, a, t in cur]

    # rated questions (this spore's own asks: the text never leaves it) --
    @_faults
    def put_rated(self, answer_id: str, question: str, memory: bytes, up: bool,
                  at_ms: int) -> None:
        """Keep a rated question's text (for export); written with the
        answers' next group (see the module's docstring)."""
        check_int("a rating's time", at_ms)
        with self._answers_lock:
            self._refuse_if_closed()
            _, _, ups, downs, _ = self._rated.get(answer_id, (question, memory, 0, 0, 0))
            self._rated[answer_id] = (question, memory, ups + up, downs + (not up), at_ms)
            self._group_grew()

    @_faults
    def rated_after(self, rowid: int, limit: int) -> list[tuple[int, str, bytes, int, int, int,
                                                                 str]]:
        """(rowid, question, memory id, up, down, rated ms, answer text) of
        the ratings after `rowid` whose memory is held here (a page)."""
        with self._answers_lock:  # the rated questions kept in memory first
            if not self._closed:
                self._write_answers()
        cur = self._durable.execute(
            "SELECT r.rowid, r.question, r.memory, r.up, r.down, r.at_ms, m.answer FROM rated r"
            " JOIN memories m ON m.id = r.memory WHERE r.rowid > ? ORDER BY r.rowid LIMIT ?",
            (check_int("rowid", rowid, BadRequest), limit))
        return [(i, q, bytes(m), u, d, t, a) for i, q, m, u, d, t, a in cur]

    @_faults
    def count_memories(self) -> int:
        return int(self._durable.execute("SELECT COUNT(*) FROM memories").fetchone()[0])

    # votes ------------------------------------------------------------
    @_faults
    def put_vote(self, vote: VoteRecord) -> bool:
        """Merge one of our vote entries: kept only if its seq is higher than
        what is stored."""
        for name, value in (("seq", vote.seq), ("up", vote.up), ("down", vote.down)):
            check_int(f"a vote's {name}", value)
        with self._tx(self._durable) as con:
            cur = con.execute(
                "INSERT INTO votes(memory, voter, region, seq, up, down, qvec, record)"
                " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(memory, voter, region) DO UPDATE SET"
                " seq=excluded.seq, up=excluded.up, down=excluded.down, qvec=excluded.qvec,"
                " record=excluded.record WHERE excluded.seq > votes.seq",
                (vote.memory_id, vote.voter, vote.region, vote.seq, vote.up, vote.down,
                 vote.qvec, vote.wire),
            )
            return cur.rowcount > 0

    @_faults
    def all_votes(self, memory_id: bytes | None = None) -> list[StoredVote]:
        """The votes stored on memories held here (on one, if `memory_id` is
        given): ours, and others' an older version stored."""
        sql = ("SELECT m.row, v.memory, v.voter, v.region, v.seq, v.up, v.down, v.qvec"
               " FROM votes v JOIN memories m ON m.id = v.memory")
        cur = (self._durable.execute(sql) if memory_id is None
               else self._durable.execute(sql + " WHERE v.memory = ?", (memory_id,)))
        return [StoredVote(row, m, v, r, Counter(s, u, d), q)
                for row, m, v, r, s, u, d, q in cur]

    @_faults
    def vote_records(self) -> list[bytes]:
        """The signed votes of the votes table (see the module's docstring)."""
        return [bytes(r[0]) for r in self._durable.execute("SELECT record FROM votes")]

    @_faults
    def count_votes(self) -> int:
        return int(self._durable.execute("SELECT COUNT(*) FROM votes").fetchone()[0])

    # answers ----------------------------------------------------------
    def put_answer(self, answer: AnswerRow, created_ms: int) -> None:
        """Keep an answer for its rating; written with the next group."""
        check_int("an answer's row", answer.row, BadRequest)
        check_int("an answer's time", created_ms, BadRequest)
        with self._answers_lock:
            self._refuse_if_closed()
            self._answers[answer.id] = (answer, created_ms)
            self._group_grew()

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise StateError(f"{WHAT} {self.path} is closed")

    def _group_grew(self) -> None:
        """A row was kept (the lock held): the group is written once full,
        else within answers_flush_s."""
        if len(self._answers) + len(self._rated) >= self.answers_batch:
            self._write_answers()
        elif self._answers_timer is None:
            self._answers_timer = threading.Timer(self.answers_flush_s, self.flush_answers)
            self._answers_timer.daemon = True
            self._answers_timer.start()

    def flush_answers(self) -> None:
        """Write the answers kept in memory now (the timer's job; a failure is
        logged and they stay for the next try)."""
        with self._answers_lock:
            self._answers_timer = None
            if self._closed:
                return
            try:
                self._write_answers()
            except SporeError as exc:
                log.warning("%d answers not written yet: %s", len(self._answers), exc)

    def _write_answers(self) -> None:
        """One transaction for the answers kept (the lock is held). On failure
        they stay in memory, at most a few batches' worth (the oldest go)."""
        if not self._answers and not self._rated:
            return
        rows = [(a.id, ms, a.memory, a.row, a.region, a.qvec)
                for a, ms in self._answers.values()]
        rated = [(answer, *kept) for answer, kept in self._rated.items()]
        try:
            with self._tx(self._fast) as con:
                con.executemany(
                    "INSERT OR REPLACE INTO answers(id, created_ms, memory, row, region, qvec)"
                    " VALUES (?,?,?,?,?,?)", rows)
                con.executemany(
                    "INSERT INTO rated(answer, question, memory, up, down, at_ms) VALUES"
                    " (?,?,?,?,?,?) ON CONFLICT(answer) DO UPDATE SET up=up+excluded.up,"
                    " down=down+excluded.down, at_ms=excluded.at_ms", rated)
        except BaseException:
            while len(self._answers) > 16 * self.answers_batch:
                del self._answers[next(iter(self._answers))]
            while len(self._rated) > 16 * self.answers_batch:
                del self._rated[next(iter(self._rated))]
            raise
        self._answers.clear()
        self._rated.clear()

    @_faults
    def answer(self, answer_id: str) -> AnswerRow | None:
        with self._answers_lock:
            kept = self._answers.get(answer_id)
            if kept is not None:
                return kept[0]
            r = self._fast.execute("SELECT id, memory, row, region, qvec FROM answers WHERE id=?",
                                   (answer_id,)).fetchone()
        return AnswerRow(*r) if r else None
