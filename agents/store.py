"""The agents' rows on disk (one SQLite file), written as little as we can.

An SD card wears with every byte, and an agent is 400 KB of weights. So:

* An agent's **birth weights** are a reference, not a copy: ``base`` (a
  full set of weights in the ``weights`` table) and ``steps`` (the mutations
  (seed, σ) applied to it, agents.evolution.derive). A child costs a row of
  ~1 KB; re-derived at load and checked bit for bit against the genome hash
  its lineage signed. A guest (a peer's child) keeps its genome as it came.
* Its **learnt weights** go to the ``weights`` table rarely (the colony says
  when), under a fresh reference; a blob nobody refers to any more goes.
* Its **standing** (fitness, counters, specialty) is written in batches.
* Every write is one transaction (`_tx`): on an autocommit connection,
  ``executemany`` committed each row on its own (16 commits for a standing
  batch of 16 agents, a WAL frame each; in one transaction, 8 pages);
  and a learnt blob, its reference and the old blob's release go together.

The connection comes in (the colony opens it); nothing here knows the path.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.genome import INITIALIZERS, Weights
from crdt import wire
from p2pnode.errors import StateError

__all__ = ["MAX_STEPS", "SCHEMA", "Row", "Store", "pack_steps", "pack_weights", "unpack_steps",
           "unpack_weights"]

SCHEMA = ("CREATE TABLE IF NOT EXISTS agents(id BLOB PRIMARY KEY, lineage BLOB NOT NULL,"
          " genome BLOB NOT NULL, specialty BLOB NOT NULL, interactions INTEGER NOT NULL,"
          " fitness REAL NOT NULL, fitness_ms INTEGER NOT NULL, good INTEGER NOT NULL,"
          " last_used_ms INTEGER NOT NULL);"
          "CREATE TABLE IF NOT EXISTS weights(ref BLOB PRIMARY KEY, data BLOB NOT NULL)")
_COLUMNS = {"learned": "BLOB", "base": "BLOB", "steps": "BLOB", "version": "BLOB"}
_REF_BYTES = 16
MAX_STEPS = 64  # mutations a stored derivation may chain
# array16 header, then per step a fixarray of a uint64 and a float64 (1 + 9 + 9)
MAX_STEPS_BYTES = 3 + MAX_STEPS * 19


def pack_weights(w: Weights) -> bytes:
    return b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in w.arrays())


def unpack_weights(data: bytes) -> Weights:
    """Weights from `pack_weights`; ValueError when the bytes do not fit."""
    sizes = [int(np.prod(shape)) for shape in INITIALIZERS.values()]
    if len(data) != 4 * sum(sizes):
        raise ValueError(f"weights of {len(data)} bytes, expected {4 * sum(sizes)}")
    flat = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(flat).all():
        raise ValueError("weights are not finite")
    parts, at = [], 0
    for size, shape in zip(sizes, INITIALIZERS.values(), strict=True):
        parts.append(flat[at:at + size].reshape(shape).copy())
        at += size
    return Weights(*parts)


def pack_steps(steps: Sequence[tuple[int, float]]) -> bytes:
    return wire.pack([[int(s), float(g)] for s, g in steps])


def unpack_steps(data: bytes | None) -> tuple[tuple[int, float], ...]:
    """ValueError unless a list of at most MAX_STEPS (seed, σ) pairs."""
    if not data:
        return ()
    try:
        raw = wire.unpack(data, MAX_STEPS_BYTES, "mutation steps", max_len=MAX_STEPS)
    except wire.DecodeError as exc:  # a ValueError, as the caller expects
        raise ValueError(f"malformed {exc}") from exc
    if not isinstance(raw, list) or not all(
            isinstance(p, list) and len(p) == 2 and type(p[0]) is int and 0 <= p[0] < 2**64
            and isinstance(p[1], float) and 0 < p[1] <= 1 for p in raw):
        raise ValueError("mutation steps of the wrong shape")
    return tuple((int(s), float(g)) for s, g in raw)


@dataclass
class Row:
    """One stored agent as read back (weights still to be derived and checked)."""

    lineage: bytes
    genome: bytes  # b"" for a derived one
    specialty: bytes
    interactions: int
    fitness: float
    fitness_ms: int
    good: int
    last_used_ms: int
    base: bytes | None
    steps: bytes | None
    learnt: bytes | None  # its learnt weights (version, or a legacy inline blob)
    version: bytes | None


class Store:
    """The agents table and the weights blobs, on a connection given."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con
        try:
            have = {r[1] for r in con.execute("PRAGMA table_info(agents)")}
            for name, kind in _COLUMNS.items():  # stores from before these columns
                if name not in have:
                    con.execute(f"ALTER TABLE agents ADD COLUMN {name} {kind}")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot read the agents store: {exc}") from exc

    def rows(self) -> Iterator[Row]:
        try:
            found = self.con.execute(
                "SELECT lineage, genome, specialty, interactions, fitness, fitness_ms, good,"
                " last_used_ms, base, steps, coalesce((SELECT data FROM weights WHERE"
                " ref = agents.version), learned), version FROM agents").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot read the agents store: {exc}") from exc
        for r in found:
            yield Row(*r)

    def blob(self, ref: bytes) -> bytes | None:
        got = self.con.execute("SELECT data FROM weights WHERE ref = ?", (ref,)).fetchone()
        return None if got is None else bytes(got[0])

    def has(self, ref: bytes) -> bool:
        return self.con.execute("SELECT 1 FROM weights WHERE ref = ?", (ref,)).fetchone() \
            is not None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction (or a part of the caller's): rolled back on any error."""
        if self.con.in_transaction:
            yield self.con
            return
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield self.con
        except BaseException:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def put_weights(self, w: Weights) -> bytes:
        ref = os.urandom(_REF_BYTES)
        with self._tx() as con:
            con.execute("INSERT INTO weights VALUES (?, ?)", (ref, pack_weights(w)))
        return ref

    def insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """(id, lineage, genome, specialty, interactions, fitness, fitness_ms,
        good, last_used_ms, base, steps) each."""
        with self._tx() as con:
            con.executemany(
                "INSERT OR REPLACE INTO agents(id, lineage, genome, specialty, interactions,"
                " fitness, fitness_ms, good, last_used_ms, base, steps) VALUES"
                " (?,?,?,?,?,?,?,?,?,?,?)", rows)

    def standing(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """(specialty, interactions, fitness, fitness_ms, good, last_used_ms, id) each."""
        with self._tx() as con:
            con.executemany("UPDATE agents SET specialty=?, interactions=?, fitness=?,"
                            " fitness_ms=?, good=?, last_used_ms=? WHERE id=?", rows)

    def learnt(self, agent_id: bytes, w: Weights) -> bytes:
        """Store an agent's learnt weights; returns their reference."""
        with self._tx() as con:
            old = con.execute("SELECT version FROM agents WHERE id = ?", (agent_id,)).fetchone()
            ref = self.put_weights(w)
            con.execute("UPDATE agents SET version = ?, learned = NULL WHERE id = ?",
                        (ref, agent_id))
            if old is not None and old[0] is not None:
                self.release(bytes(old[0]))
        return ref

    def delete(self, agent_id: bytes) -> None:
        with self._tx() as con:
            got = con.execute("SELECT base, version FROM agents WHERE id = ?",
                              (agent_id,)).fetchone()
            con.execute("DELETE FROM agents WHERE id = ?", (agent_id,))
            for ref in got or ():
                if ref is not None:
                    self.release(bytes(ref))

    def release(self, ref: bytes) -> None:
        """Drop a weights blob no agent refers to any more."""
        self.con.execute("DELETE FROM weights WHERE ref = ?1 AND NOT EXISTS (SELECT 1 FROM"
                         " agents WHERE base = ?1 OR version = ?1)", (ref,))

    def sweep(self) -> None:
        """Blobs left by a crash between a write and its reference."""
        self.con.execute("DELETE FROM weights WHERE ref NOT IN (SELECT base FROM agents WHERE"
                         " base IS NOT NULL UNION SELECT version FROM agents WHERE version IS"
                         " NOT NULL)")
