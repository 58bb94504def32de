"""Faults of the disk and of the state directory, on real files: a full disk, a
damaged or emptied database, a damaged node key, a strange lock file, a broken
calibration file. Each gets a typed error that names the file and says what to
do; nothing acknowledged is lost; no file that exists is replaced."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from agents.consensus import PRIOR
from p2pnode.calibrator import Calibrator
from p2pnode.errors import DiskFull, StateError, VerifyError
from p2pnode.identity import KEY_FILE, Identity, load_or_create
from p2pnode.lock import StateLock
from p2pnode.records import MemoryRecord, make_memory, make_vote
from p2pnode.storage import DB_FILE, Storage, connect_wal, transaction
from tests.conftest import Daemon, make_daemon

ME = Identity.from_seed(b"faults")
DIM = 8


def _memory(i: int, size: int = 200) -> tuple[MemoryRecord, bytes, float]:
    rec = make_memory(ME, question="", answer=f"memory {i} " + "x" * size,
                      embedding=np.ones(DIM, np.float32), created_ms=1, origin="taught",
                      dna_hash=b"d" * 32)
    return rec, bytes(DIM), 0.5


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pages(db: Path, table: str, kind: str) -> list[int]:
    """Page numbers of `table`'s b-tree pages of one kind (leaf, internal, overflow)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        return [n for (n,) in con.execute(
            "SELECT pageno FROM dbstat WHERE name=? AND pagetype=? ORDER BY pageno",
            (table, kind))]


def _damage_page(db: Path, page: int) -> None:
    """Overwrite one whole page with noise, as a bad sector would."""
    size = 4096
    with open(db, "r+b") as fh:
        fh.seek((page - 1) * size)
        fh.write(random.Random(page).randbytes(size))


def _teach_until_full(db: Storage, acked: list[bytes]) -> None:
    """Teach one memory per transaction; the ids acknowledged go to `acked`."""
    for i in range(10_000):
        acked += [mid for _, mid, _ in db.add_memories([_memory(i, 3000)])]


def _stored(path: Path, n: int, size: int = 200) -> None:
    db = Storage(path)
    db.add_memories([_memory(i, size) for i in range(n)])
    db.close()


# --- every write rolls back on any error; integers bounded -----------------------------


def test_a_vote_at_2_63_is_refused_and_the_next_write_works(tmp_path: Path) -> None:
    db = Storage(tmp_path / DB_FILE)
    [(_, mid, _)] = db.add_memories([_memory(0)])

    def vote(seq: int, up: int = 1, down: int = 0) -> bool:
        return db.put_vote(make_vote(ME, memory_id=mid, region=b"r" * 32, qvec=b"q",
                                     up=up, down=down, seq=seq))

    for bad in ({"seq": 2**63}, {"seq": 1, "up": 2**63}, {"seq": 1, "down": 2**64 - 1}):
        with pytest.raises(VerifyError, match="out of range"):
            vote(**bad)
    huge = make_memory(ME, question="", answer="later", embedding=np.ones(DIM, np.float32),
                       created_ms=2**63, origin="taught", dna_hash=b"d" * 32)
    with pytest.raises(VerifyError, match="created time"):  # the whole batch, before BEGIN
        db.add_memories([_memory(1), (huge, bytes(DIM), 0.5)])
    assert vote(2**63 - 1, up=3)  # the largest that fits, right after
    assert db.add_memories([_memory(2)])[0][2]
    assert db.count_memories() == 2 and db.count_votes() == 1
    db.close()


def test_any_exception_rolls_the_transaction_back(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    con = connect_wal(path, "CREATE TABLE IF NOT EXISTS t(x INTEGER)")

    def overflow() -> None:
        with transaction(con, path) as tx:  # bound unchecked: OverflowError after a write
            tx.execute("INSERT INTO t VALUES (1)")
            tx.execute("INSERT INTO t VALUES (?)", (2**63,))

    with pytest.raises(OverflowError):
        overflow()
    assert not con.in_transaction
    con.execute("BEGIN")  # a transaction some other code left open...
    con.execute("INSERT INTO t VALUES (3)")
    with transaction(con, path) as tx:  # ...is rolled back, never blocks the next write
        tx.execute("INSERT INTO t VALUES (4)")
    assert con.execute("SELECT x FROM t").fetchall() == [(4,)]
    con.close()


def test_a_failed_commit_rolls_back(tmp_path: Path) -> None:
    """COMMIT itself can fail (here a deferred constraint; a full disk, a busy
    file): the transaction must not stay open."""
    path = tmp_path / "t.sqlite3"
    con = connect_wal(path, "CREATE TABLE IF NOT EXISTS p(id INTEGER PRIMARY KEY);"
                      "CREATE TABLE IF NOT EXISTS c(p INTEGER REFERENCES p(id)"
                      " DEFERRABLE INITIALLY DEFERRED)")
    con.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(StateError, match=str(path)), transaction(con, path) as tx:
        tx.execute("INSERT INTO c VALUES (7)")
    assert not con.in_transaction
    with transaction(con, path) as tx:
        tx.execute("INSERT INTO p VALUES (7)")
        tx.execute("INSERT INTO c VALUES (7)")
    assert con.execute("SELECT count(*) FROM c").fetchone() == (1,)
    con.close()


# --- a full disk --------------------------------------------------------------------------


def test_a_full_database_is_disk_full_and_loses_nothing(tmp_path: Path) -> None:
    """SQLITE_FULL by the page limit: the same error code a full disk gives."""
    path = tmp_path / DB_FILE
    db = Storage(path)
    pages = db._durable.execute("PRAGMA page_count").fetchone()[0]
    db._durable.execute(f"PRAGMA max_page_count={pages + 8}")
    acked: list[bytes] = []
    with pytest.raises(DiskFull) as full:
        _teach_until_full(db, acked)
    assert full.value.status == 507
    assert str(path) in str(full.value) and f"filesystem of {tmp_path}" in str(full.value)
    assert "nothing acknowledged was lost" in str(full.value)
    assert db.count_memories() == len(acked) > 0
    db._durable.execute("PRAGMA max_page_count=1073741823")  # space freed
    assert db.add_memories([_memory(999)])[0][2]
    db.close()
    db = Storage(path)
    assert all(db.memory_by_id(m) is not None for m in acked)
    db.close()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KB tmpfs: a disk that really fills up (needs root; skipped elsewhere)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mnt)],
            capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def _fill(fs: Path) -> Path:
    """Fill `fs` to the last byte with one file; returns it (delete it to free space)."""
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while fh.write(b"\0" * 4096):
            pass
    return filler


def test_a_really_full_disk(tiny_fs: Path) -> None:
    path, filler = tiny_fs / DB_FILE, tiny_fs / "filler"
    filler.write_bytes(b"\0" * 128 * 1024)
    db = Storage(path)
    acked: list[bytes] = []
    with pytest.raises(DiskFull, match=f"Free space on the filesystem of {tiny_fs}"):
        _teach_until_full(db, acked)
    assert db.count_memories() == len(acked) > 0
    filler.unlink()  # space freed: the next write works on the same connection
    assert db.add_memories([_memory(9999)])[0][2]
    db.close()
    db = Storage(path)
    assert all(db.memory_by_id(m) is not None for m in acked)
    db.close()


def test_a_full_disk_at_the_first_run(tiny_fs: Path) -> None:
    filler = _fill(tiny_fs)
    with pytest.raises(DiskFull, match=f"node key {tiny_fs / KEY_FILE}"):
        load_or_create(tiny_fs)
    with pytest.raises(DiskFull, match=str(tiny_fs / DB_FILE)):
        Storage(tiny_fs / DB_FILE)
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler"]  # no half-written files
    filler.unlink()
    assert load_or_create(tiny_fs)[1]
    Storage(tiny_fs / DB_FILE).close()


def test_calibration_save_on_a_full_disk_keeps_the_last_file(
        tiny_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    cal = Calibrator(tiny_fs / "calibration.json")
    cal.save(b'{"samples": []}')
    _fill(tiny_fs)
    cal.save(b'{"samples": [[0.5, 0.1, true]]}' + b" " * 100_000)  # kept for flush
    cal.flush()
    assert "free space on the filesystem" in caplog.text
    assert (tiny_fs / "calibration.json").read_bytes() == b'{"samples": []}'
    assert not (tiny_fs / "calibration.tmp").exists()


# --- a damaged, foreign or emptied database ---------------------------------------------


def test_a_damaged_page_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    _stored(path, 60, 1500)
    leaves = _pages(path, "memories", "leaf")
    _damage_page(path, leaves[len(leaves) // 2])
    damaged = _sha(path)
    db = Storage(path)  # header and schema are fine: opening does not read every page
    with pytest.raises(StateError, match=f"{path} is damaged .*restore the file from a backup"):
        db.index_rows(DIM)  # the start's load does, and says so
    with pytest.raises(StateError, match="is damaged"):
        db.check()
    db.close()
    assert _sha(path) == damaged


def test_an_index_page_is_found_by_the_check(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    _stored(path, 300)
    [page, *_] = _pages(path, "sqlite_autoindex_memories_1", "leaf")
    _damage_page(path, page)
    db = Storage(path)
    db.index_rows(DIM)  # a table scan never reads the index
    with pytest.raises(StateError, match=f"{path} is damaged"):
        db.check()
    db.close()


@pytest.mark.parametrize(("offset", "why"), [(0, "SQLite header"), (16, "not a database")])
def test_a_foreign_file_is_refused_not_started_over(tmp_path: Path, offset: int,
                                                    why: str) -> None:
    path = tmp_path / DB_FILE
    _stored(path, 3)
    with open(path, "r+b") as fh:  # the header, or page 1's fields after its magic
        fh.seek(offset)
        fh.write(b"\xa5" * 84)
    before = _sha(path)
    with pytest.raises(StateError, match=f"{path} is damaged .*{why}"):
        Storage(path)
    assert _sha(path) == before


def test_an_empty_database_after_a_run_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    path = tmp_path / DB_FILE
    path.touch()
    with pytest.raises(StateError, match=f"{path} is empty .*has run before "
                       f".*{KEY_FILE} exists.*move it aside"):
        Storage(path)
    assert path.stat().st_size == 0
    other = tmp_path / "gossip.sqlite3"  # every store opened through connect_wal
    other.touch()
    with pytest.raises(StateError, match="is empty"):
        connect_wal(other, "CREATE TABLE IF NOT EXISTS items(x)", what="the gossip store")


def test_a_new_database_is_never_empty(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    (tmp_path / (DB_FILE + ".new")).write_bytes(b"a creation cut short")
    db = Storage(path)
    assert path.stat().st_size > 0 and db.count_memories() == 0
    db.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_FILE]


# --- the node key ---------------------------------------------------------------------------


def test_every_flipped_bit_of_the_key_is_refused(tmp_path: Path) -> None:
    me, created = load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    good = path.read_bytes()
    assert created and len(good) == 64 and good[32:] == me.public_key
    for bit in range(len(good) * 8):
        flipped = bytearray(good)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(flipped))
        with pytest.raises(StateError, match=f"node key {path} is damaged .*never makes a new"):
            load_or_create(tmp_path)
        assert path.read_bytes() == bytes(flipped)
    path.write_bytes(good)
    assert load_or_create(tmp_path)[0].public_key == me.public_key


@pytest.mark.parametrize("size", [0, 1, 31, 33, 63, 65, 4096])
def test_a_key_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(size))
    os.close(fd)
    before = path.read_bytes()
    with pytest.raises(StateError, match=f"{path} is damaged"):
        load_or_create(tmp_path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [KEY_FILE]


def test_a_dangling_key_link_is_refused_not_replaced(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).symlink_to(tmp_path / "gone")
    with pytest.raises(StateError, match="cannot read the node key"):
        load_or_create(tmp_path)
    assert (tmp_path / KEY_FILE).is_symlink() and not (tmp_path / "gone").exists()


def test_a_key_from_before_loads_and_gains_its_check(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    old = Identity.from_seed(b"old")
    seed = hashlib.sha256(b"old").digest()  # what from_seed feeds the key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, seed)
    os.close(fd)
    assert load_or_create(tmp_path)[0].public_key == old.public_key
    assert path.read_bytes() == seed + old.public_key
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create(tmp_path)[0].public_key == old.public_key


# --- the lock file -------------------------------------------------------------------------


def test_a_garbage_lock_file_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / "spore.lock").write_bytes(os.urandom(300) + b"\x1b[2J")
    lock = StateLock(tmp_path)
    lock.acquire()
    assert (tmp_path / "spore.lock").read_text() == f"{os.getpid()}\n"
    lock.release()


def test_a_held_lock_with_garbage_says_unknown(tmp_path: Path) -> None:
    lock = StateLock(tmp_path)
    lock.acquire()
    (tmp_path / "spore.lock").write_bytes(b"\x1b[31m12\n\x00")
    with pytest.raises(StateError, match=r"\(pid unknown\)"):
        StateLock(tmp_path).acquire()
    lock.release()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_a_lock_that_is_not_a_file_is_refused(tmp_path: Path, kind: str) -> None:
    lock, target = tmp_path / "spore.lock", tmp_path / "precious"
    target.write_text("keep me")
    {"symlink": lambda: lock.symlink_to(target), "fifo": lambda: os.mkfifo(lock),
     "directory": lock.mkdir}[kind]()
    with pytest.raises(StateError, match=str(lock)):
        StateLock(tmp_path).acquire()
    assert target.read_text() == "keep me"


# --- calibration.json -------------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b"", b"\xff\xfe", b"null", b"[" * 100_000, b'{"samples": 5}', b'{"samples": [[1, 2]]}',
    b'{"samples": [[NaN, 0, true]]}', b'{"samples": [[1e300, 1e300, true], [-1e300, 0, 0]]}',
    b'{"samples": [[' + b"9" * 5000 + b', 0, true]]}',
])
def test_a_broken_calibration_file_falls_back_to_the_prior(
        tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "calibration.json"
    path.write_bytes(content)
    cal = Calibrator(path)
    with caplog.at_level(logging.WARNING):
        cal.load()
    assert cal.current == PRIOR and not cal.samples
    assert "unreadable" in caplog.text and str(path) in caplog.text
    assert (tmp_path / "calibration.json.bad").read_bytes() == content
    json.dumps(cal.status(), allow_nan=False)


# --- the daemon refuses to start, names the file, touches nothing -----------------------------


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory of a spore that ran, was taught 80 memories, and stopped."""
    d = make_daemon(tmp_path_factory.mktemp("ran"))
    d.start()
    try:
        text = "the spore keeps what it was taught on the device that learnt it. "
        chunks = [{"text": f"fact {i}: " + text[i % 20:] * 12, "origin": f"f#{i}"}
                  for i in range(80)]
        d.json("POST", "/v1/ingest", {"chunks": chunks})
    finally:
        assert d.stop() == 0
    return d.state_dir


def _refused(tmp_path: Path, ran: Path, damage: Callable[[Path], Path]) -> str:
    d: Daemon = make_daemon(tmp_path)
    shutil.copytree(ran, d.state_dir)
    damaged = damage(d.state_dir)
    kept = {p.name: _sha(p) for p in d.state_dir.iterdir()
            if p.is_file() and p.name != "spore.lock"}
    d.start(wait=False)
    assert d.stop_wait() == 1
    log = d.log.read_text()
    assert str(damaged) in log and "Traceback" not in log, log
    assert {p.name: _sha(p) for p in d.state_dir.iterdir()
            if p.is_file() and p.name != "spore.lock"} == kept
    return log


def test_daemon_refuses_a_damaged_database_page(tmp_path: Path, ran: Path) -> None:
    def damage(state: Path) -> Path:
        leaves = _pages(state / DB_FILE, "memories", "leaf")
        _damage_page(state / DB_FILE, leaves[len(leaves) // 2])
        return state / DB_FILE

    assert "is damaged" in _refused(tmp_path, ran, damage)


def test_daemon_refuses_an_emptied_database(tmp_path: Path, ran: Path) -> None:
    def damage(state: Path) -> Path:
        os.truncate(state / DB_FILE, 0)
        return state / DB_FILE

    assert "has run before" in _refused(tmp_path, ran, damage)


def test_daemon_refuses_a_flipped_bit_in_its_key(tmp_path: Path, ran: Path) -> None:
    def damage(state: Path) -> Path:
        key = bytearray((state / KEY_FILE).read_bytes())
        key[5] ^= 0x10
        (state / KEY_FILE).write_bytes(bytes(key))
        return state / KEY_FILE

    assert "never makes a new identity" in _refused(tmp_path, ran, damage)
