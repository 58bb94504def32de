"""SQLite storage on real files: dedupe, vote merge, reopen, the lock."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from p2pnode.errors import AlreadyRunning, SporeError
from p2pnode.identity import Identity
from p2pnode.lock import StateLock
from p2pnode.records import make_memory, make_vote
from p2pnode.storage import AnswerRow, Forgotten, Storage

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
    got = reader.held_by_rows([row for row, _, _ in stored])
    for (row, _, _), (rec, _, _) in zip(stored, items, strict=True):
        memory, vector = got[row]
        assert (memory.id, memory.answer) == (rec.id, rec.answer)
        np.testing.assert_array_equal(vector, rec.vector())
    assert reader.held_by_rows([]) == {}
    reader.close()
    db.close()


# --- answers: kept in memory, written in groups ------------------------------------------

def _answer(i: int) -> AnswerRow:
    return AnswerRow(f"a{i}", b"m" * 32, i, b"r" * 32, b"q")


def _on_disk(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as con:
        return {r[0] for r in con.execute("SELECT id FROM answers")}


def test_answers_are_written_in_groups_and_found_before(tmp_path: Path) -> None:
    db = Storage(tmp_path / "s.db", answers_batch=3, answers_flush_s=3600)
    for i in range(2):
        db.put_answer(_answer(i), 1)
    assert _on_disk(tmp_path / "s.db") == set()  # kept in memory…
    assert db.answer("a1") == _answer(1)  # …where a rating finds it
    db.put_answer(_answer(2), 1)  # the third: the group is written
    assert _on_disk(tmp_path / "s.db") == {"a0", "a1", "a2"}
    db.put_answer(_answer(3), 1)
    db.close()  # what is left is written at close
    assert _on_disk(tmp_path / "s.db") == {"a0", "a1", "a2", "a3"}
    again = Storage(tmp_path / "s.db")
    assert again.answer("a3") == _answer(3)
    again.close()


def _rated_on_disk(path: Path) -> dict[str, tuple[str, int, int]]:
    with contextlib.closing(sqlite3.connect(path)) as con:
        return {a: (q, u, d) for a, q, u, d in con.execute(
            "SELECT answer, question, up, down FROM rated")}


def test_rated_questions_go_with_the_answers_group_and_export_sees_them(
        tmp_path: Path) -> None:
    """A rating's question text (for `export --rated`) is no synced commit of
    its own: kept in memory, re-ratings summed, written with the answers'
    next group or before export reads them, and at close."""
    path = tmp_path / "s.db"
    db = Storage(path, answers_batch=4, answers_flush_s=3600)
    [(_, memory, _)] = db.add_memories([_item("the answer")])
    db.put_rated("a0", "the question?", memory, True, 10)
    db.put_rated("a0", "the question?", memory, False, 11)
    assert _rated_on_disk(path) == {}  # kept in memory
    page = db.rated_after(0, 10)  # export reads: written first
    assert [(q, m, u, d, t, a) for _, q, m, u, d, t, a in page] == [
        ("the question?", memory, 1, 1, 11, "the answer")]
    assert _rated_on_disk(path) == {"a0": ("the question?", 1, 1)}
    db.put_rated("a0", "the question?", memory, True, 12)  # summed with what is on disk
    for i in range(3):
        db.put_answer(_answer(i), 1)  # the fourth row kept: the group is written
    assert _rated_on_disk(path) == {"a0": ("the question?", 2, 1)}
    db.put_rated("a1", "another?", memory, True, 13)
    db.close()
    assert _rated_on_disk(path) == {"a0": ("the question?", 2, 1), "a1": ("another?", 1, 0)}
    db = Storage(path, answers_batch=4, answers_flush_s=3600)
    db.put_rated("a3", "kept in memory?", memory, True, 15)
    db.forget([Forgotten(memory, ME.public_key, None, 16)])  # drops the kept ones too
    db.close()
    assert _rated_on_disk(path) == {}
    with pytest.raises(SporeError):
        db.put_rated("a2", "after close?", memory, True, 14)


def test_answers_are_written_a_few_seconds_later_without_more_asks(tmp_path: Path) -> None:
    db = Storage(tmp_path / "s.db", answers_batch=1000, answers_flush_s=0.05)
    db.put_answer(_answer(0), 1)
    deadline = time.monotonic() + 10
    while _on_disk(tmp_path / "s.db") != {"a0"} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _on_disk(tmp_path / "s.db") == {"a0"}
    db.close()


def test_an_answer_that_cannot_be_written_stays_for_its_rating(tmp_path: Path) -> None:
    db = Storage(tmp_path / "s.db", answers_batch=2, answers_flush_s=3600)
    db.put_answer(_answer(0), 1)
    db.put_answer(AnswerRow("a1", b"m" * 32, 1, b"r" * 32, b"q"), 1)
    db._fast.execute("DROP TABLE answers")  # any write of answers now fails
    db.put_answer(_answer(2), 1)
    with pytest.raises(SporeError):
        db.put_answer(_answer(3), 1)
    assert db.answer("a3") == _answer(3) and db.answer("a2") == _answer(2)
    db.close()  # logged, not raised


_CRASH = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_storage import _answer, _item
from p2pnode.storage import Storage
db = Storage(Path({path!r}), answers_batch=3, answers_flush_s=3600)
db.add_memories([_item("taught")])
for i in range(4):
    db.put_answer(_answer(i), 1)
print("acknowledged", flush=True)
time.sleep(60)
"""


def test_kill_9_loses_only_the_answers_not_written_yet(tmp_path: Path) -> None:
    """What a crash can lose: answer ids of the last seconds, never a memory."""
    path = tmp_path / "s.db"
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", _CRASH.format(root=root, path=str(path))],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"acknowledged\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    db = Storage(path)
    db.check()
    assert [m.answer for m in db.list_memories(10, 0)] == ["taught"]
    assert {a for a in ("a0", "a1", "a2", "a3") if db.answer(a)} == {"a0", "a1", "a2"}
    db.close()
