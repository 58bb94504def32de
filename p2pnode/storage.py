"""SQLite storage of memories, votes and given answers (WAL).

One thread owns a Storage (the daemon's database worker); nothing here is
async. Memories and votes are written through a connection with
``synchronous=FULL``: a teach is acknowledged only after its transaction is
in the WAL and fsynced, so it survives kill -9 and (on honest storage) power
loss. Answers are a convenience for `spore rate` and use ``NORMAL``: they
survive a crash of the process, the last few may be lost on power loss.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crdt.votes import Counter
from p2pnode.errors import StateError
from p2pnode.records import MemoryRecord, VoteRecord, decode_memory

DB_FILE = "spore.sqlite3"

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
"""


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


class Reader:
    """Read-only access to memories from a thread other than the storage's own,
    so that an ask fetches its answer in the same hop that ranked it."""

    def __init__(self, path: Path) -> None:
        self._con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def memories_by_rows(self, rows: Sequence[int]) -> dict[int, MemoryRow]:
        return _memories_by_rows(self._con, rows)

    def close(self) -> None:
        self._con.close()


def connect_wal(path: Path, schema: str, synchronous: str = "NORMAL",
                what: str = "the database") -> sqlite3.Connection:
    """An autocommit SQLite connection in WAL mode with `schema` applied; a
    broken file is a StateError that names it."""
    try:
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={synchronous}")
        con.execute("PRAGMA busy_timeout=5000")
        con.executescript(schema)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"cannot open {what} {path}: {exc}") from exc
    return con


class Storage:
    """The spore's database. Not thread-safe: one worker thread owns it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._durable = self._connect("FULL")
        self._fast = self._connect("NORMAL")

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        return connect_wal(self.path, _SCHEMA, synchronous)

    @contextmanager
    def _tx(self, con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def close(self) -> None:
        self._fast.close()
        self._durable.close()

    # memories ---------------------------------------------------------
    def add_memories(
        self, items: Sequence[tuple[MemoryRecord, bytes, float]]
    ) -> list[tuple[int, bytes, bool]]:
        """Store (record, int8 embedding bytes, scale) items in one durable
        transaction. Returns (row, memory id, newly stored) per item; a memory
        already stored (same author, text and origin) keeps its first id."""
        out: list[tuple[int, bytes, bool]] = []
        with self._tx(self._durable) as con:
            for rec, emb, scale in items:
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

    def memories_by_rows(self, rows: Sequence[int]) -> dict[int, MemoryRow]:
        return _memories_by_rows(self._durable, rows)

    def reader(self) -> Reader:
        """A read-only connection for another thread (WAL readers never block)."""
        return Reader(self.path)

    def memory_by_id(self, memory_id: bytes) -> MemoryRow | None:
        r = self._durable.execute(
            f"SELECT {self._ROW_COLS} FROM memories WHERE id=?", (memory_id,)).fetchone()
        return MemoryRow(*r) if r else None

    def memory_record(self, memory_id: bytes) -> bytes | None:
        r = self._durable.execute("SELECT record FROM memories WHERE id=?", (memory_id,)).fetchone()
        return bytes(r[0]) if r else None

    def records_by_author(self, author: bytes) -> list[MemoryRecord]:
        cur = self._durable.execute("SELECT record FROM memories WHERE author=? ORDER BY row",
                                    (author,))
        return [decode_memory(bytes(r[0])) for r in cur]

    def list_memories(self, limit: int, offset: int) -> list[MemoryRow]:
        cur = self._durable.execute(
            f"SELECT {self._ROW_COLS} FROM memories ORDER BY row DESC LIMIT ? OFFSET ?",
            (limit, offset))
        return [MemoryRow(*r) for r in cur]

    def count_memories(self) -> int:
        return int(self._durable.execute("SELECT COUNT(*) FROM memories").fetchone()[0])

    # votes ------------------------------------------------------------
    def put_vote(self, vote: VoteRecord) -> bool:
        """Merge a vote entry: kept only if its seq is higher than what is stored."""
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

    def all_votes(self, memory_id: bytes | None = None) -> list[StoredVote]:
        """The votes on memories held here (on one, if `memory_id` is given)."""
        sql = ("SELECT m.row, v.memory, v.voter, v.region, v.seq, v.up, v.down, v.qvec"
               " FROM votes v JOIN memories m ON m.id = v.memory")
        cur = (self._durable.execute(sql) if memory_id is None
               else self._durable.execute(sql + " WHERE v.memory = ?", (memory_id,)))
        return [StoredVote(row, m, v, r, Counter(s, u, d), q)
                for row, m, v, r, s, u, d, q in cur]

    def count_votes(self) -> int:
        return int(self._durable.execute("SELECT COUNT(*) FROM votes").fetchone()[0])

    # answers ----------------------------------------------------------
    def put_answer(self, answer: AnswerRow, created_ms: int) -> None:
        with self._tx(self._fast) as con:
            con.execute(
                "INSERT OR REPLACE INTO answers(id, created_ms, memory, row, region, qvec)"
                " VALUES (?,?,?,?,?,?)",
                (answer.id, created_ms, answer.memory, answer.row, answer.region, answer.qvec))

    def answer(self, answer_id: str) -> AnswerRow | None:
        r = self._fast.execute(
            "SELECT id, memory, row, region, qvec FROM answers WHERE id=?", (answer_id,)).fetchone()
        return AnswerRow(*r) if r else None
