"""SQLite storage on real files: dedupe, vote merge, reopen, the lock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p2pnode.errors import AlreadyRunning
from p2pnode.identity import Identity
from p2pnode.lock import StateLock
from p2pnode.records import make_memory, make_vote
from p2pnode.storage import AnswerRow, Storage

ME = Identity.from_seed(b"me")
DIM = 8


def _item(text: str, origin: str = "taught") -> tuple:  # type: ignore[type-arg]
    emb = np.ones(DIM, np.float32) / np.sqrt(DIM)
    rec = make_memory(ME, question="", answer=text, embedding=emb, created_ms=1,
                      origin=origin, dna_hash=b"d" * 32)
    return rec, bytes(range(DIM)), 0.5


def test_memories_persist_and_dedupe(tmp_path: Path) -> None:
    db = Storage(tmp_path / "s.db")
    first = db.add_memories([_item("a"), _item("b")])
    again = db.add_memories([_item("a"), _item("a", origin="file#1")])
    assert [new for *_, new in first] == [True, True]
    assert again[0][:2] == first[0][:2] and not again[0][2]
    assert again[1][2]
    db.close()
    db = Storage(tmp_path / "s.db")
    rows, matrix, _ = db.index_rows(DIM)
    assert len(rows) == 3 and matrix.shape == (3, DIM) and list(matrix[0]) == list(range(DIM))
    assert db.memory_by_id(first[1][1]) is not None
    assert [m.answer for m in db.list_memories(10, 0)] == ["a", "b", "a"]
    assert db.count_memories() == 3


def test_votes_keep_the_highest_seq(tmp_path: Path) -> None:
    db = Storage(tmp_path / "s.db")
    [(_, mid, _)] = db.add_memories([_item("a")])

    def vote(seq: int, up: int) -> bool:
        return db.put_vote(make_vote(ME, memory_id=mid, region=b"r" * 32, qvec=b"q",
                                     up=up, down=0, seq=seq))

    assert vote(2, 2) and not vote(1, 1) and not vote(2, 9)
    [stored] = db.all_votes()
    assert (stored.counter.seq, stored.counter.up) == (2, 2)


def test_answers_round_trip(tmp_path: Path) -> None:
    db = Storage(tmp_path / "s.db")
    db.put_answer(AnswerRow("abc", b"m" * 32, 7, b"r" * 32, b"q"), 1)
    assert db.answer("abc") == AnswerRow("abc", b"m" * 32, 7, b"r" * 32, b"q")
    assert db.answer("nope") is None


def test_second_lock_is_refused(tmp_path: Path) -> None:
    first = StateLock(tmp_path)
    first.acquire()
    with pytest.raises(AlreadyRunning, match="already using the state directory"):
        StateLock(tmp_path).acquire()
    first.release()
    StateLock(tmp_path).acquire()


def test_the_reader_scores_by_the_records_own_embedding(tmp_path: Path) -> None:
    """Local candidates are scored by the float16 embedding the signed record
    holds, exactly as a spore that fetches the record scores it."""
    db = Storage(tmp_path / "spore.sqlite3")
    rng = np.random.default_rng(7)
    items = []
    for text in ("a", "b", "c"):
        emb = rng.normal(size=DIM).astype(np.float32)
        rec = make_memory(ME, question="", answer=text, embedding=emb / np.linalg.norm(emb),
                          created_ms=1, origin="taught", dna_hash=b"d" * 32)
        items.append((rec, bytes(range(DIM)), 0.5))
    stored = db.add_memories(items)
    reader = db.reader()
    got = reader.embeddings_by_rows([row for row, _, _ in stored])
    for (row, _, _), (rec, _, _) in zip(stored, items, strict=True):
        np.testing.assert_array_equal(got[row], rec.vector())
    assert reader.embeddings_by_rows([]) == {}
    reader.close()
    db.close()
