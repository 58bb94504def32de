"""Identity, signed records and the swarm DNA: they verify, forgeries raise."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgpack
import numpy as np
import pytest

from p2pnode import dna as dna_mod
from p2pnode.errors import StateError, VerifyError
from p2pnode.identity import Identity, load_or_create, node_id, verify
from p2pnode.records import decode_memory, decode_vote, make_memory, make_vote

ALICE = Identity.from_seed(b"alice")
MALLORY = Identity.from_seed(b"mallory")


def _memory(identity: Identity = ALICE, answer: str = "Debian is a free OS.") -> bytes:
    emb = np.linspace(-1, 1, 384, dtype=np.float32)
    return make_memory(identity, question="What is Debian?", answer=answer, embedding=emb,
                       created_ms=1, origin="taught", dna_hash=b"d" * 32).wire


def test_key_file_is_private_and_reloads(tmp_path: Path) -> None:
    first, created = load_or_create(tmp_path)
    again, created_again = load_or_create(tmp_path)
    assert created and not created_again
    assert first.public_key == again.public_key
    assert stat.S_IMODE(os.stat(tmp_path / "node_identity.key").st_mode) == 0o600
    assert first.node_id == node_id(first.public_key) and len(first.node_id) == 32


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    os.chmod(tmp_path / "node_identity.key", 0o644)
    with pytest.raises(StateError, match="chmod 600"):
        load_or_create(tmp_path)


def test_memory_round_trip_and_content_address() -> None:
    wire = _memory()
    rec = decode_memory(wire)
    assert rec.answer == "Debian is a free OS." and rec.author == ALICE.public_key
    assert rec.wire == wire
    assert rec.id != decode_memory(_memory(answer="other")).id
    assert rec.vector().shape == (384,)


def test_altered_memory_is_rejected() -> None:
    body, sig = msgpack.unpackb(_memory())
    fields = msgpack.unpackb(body)
    fields[3] = "Debian is proprietary."
    forged = msgpack.packb([msgpack.packb(fields), sig])
    with pytest.raises(VerifyError):
        decode_memory(forged)


def test_memory_signed_by_someone_else_is_rejected() -> None:
    body, _ = msgpack.unpackb(_memory())
    other_sig = MALLORY.sign(b"sporemind/memory/v1", body)
    with pytest.raises(VerifyError):
        decode_memory(msgpack.packb([body, other_sig]))


@pytest.mark.parametrize("junk", [b"", b"\x00" * 10, b"\x92\x01\x02", os.urandom(300),
                                  b"\xff" * 70_000])
def test_garbage_is_a_verify_error(junk: bytes) -> None:
    with pytest.raises(VerifyError):
        decode_memory(junk)
    with pytest.raises(VerifyError):
        decode_vote(junk)


def test_vote_is_not_a_memory() -> None:
    """Domain separation: a vote's signature cannot pass as a memory's."""
    vote = make_vote(ALICE, memory_id=b"m" * 32, region=b"r" * 32, qvec=b"q" * 388,
                     up=1, down=0, seq=1)
    assert decode_vote(vote.wire).up == 1
    with pytest.raises(VerifyError):
        decode_memory(vote.wire)
    with pytest.raises(VerifyError):
        verify(ALICE.public_key, b"sporemind/memory/v1", vote.body, vote.signature)


def test_a_vote_carries_the_memory_author_and_old_votes_still_decode() -> None:
    """New votes are version 2 bodies naming the memory's author; a version 1
    body (held in gossip stores written before) decodes with an unknown author."""
    vote = make_vote(ALICE, memory_id=b"m" * 32, region=b"r" * 32, qvec=b"q" * 388,
                     up=1, down=0, seq=1, author=MALLORY.public_key)
    assert msgpack.unpackb(vote.body)[1] == 2
    assert decode_vote(vote.wire) == vote and vote.author == MALLORY.public_key
    assert decode_vote(make_vote(ALICE, memory_id=b"m" * 32, region=b"r" * 32, qvec=b"q" * 388,
                                 up=1, down=0, seq=1).wire).author == b""
    v1 = msgpack.packb(["vote", 1, b"m" * 32, ALICE.public_key, b"r" * 32, b"q" * 388, 0, 1, 1])
    old = decode_vote(msgpack.packb([v1, ALICE.sign(b"sporemind/vote/v1", v1)]))
    assert (old.author, old.down, old.body) == (b"", 1, v1)


def _dna(identity: Identity = ALICE) -> dna_mod.Dna:
    return dna_mod.found(identity, swarm="test", encoder_name="enc", encoder_sha256="ab" * 32,
                         dim=384, created_ms=5, seed=b"s" * 16)


def test_dna_round_trip_and_hash(tmp_path: Path) -> None:
    dna = _dna()
    dna_mod.save(tmp_path, dna)
    loaded = dna_mod.load(tmp_path)
    assert loaded is not None and loaded.hash == dna.hash
    assert loaded.fields["replication"] == 3 and loaded.lsh.seed == b"s" * 16
    assert loaded.show()["founders"] == [ALICE.public_key.hex()]


def test_dna_signed_by_a_non_founder_is_refused() -> None:
    dna = _dna()
    sig = MALLORY.sign(b"sporemind/dna/v1", dna.body)
    forged = msgpack.packb([dna.body, MALLORY.public_key, sig])
    with pytest.raises(VerifyError, match="founders"):
        dna_mod.decode(forged)


def test_corrupt_dna_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "dna.bin").write_bytes(b"not a dna")
    with pytest.raises(StateError, match=r"dna\.bin"):
        dna_mod.load(tmp_path)


def test_encoder_mismatch_is_refused() -> None:
    with pytest.raises(StateError, match="encoder"):
        dna_mod.check_encoder(_dna(), "cd" * 32, 384)
    dna_mod.check_encoder(_dna(), "ab" * 32, 384)
