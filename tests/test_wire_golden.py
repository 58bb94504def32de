"""Wire formats pinned: the same inputs, signed by the same (deterministic
Ed25519) keys, make the same bytes as before codecs shared one decoder and
one envelope, and those bytes decode back. A change here breaks every record,
DNA file, invitation answer and stored agent already out there."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pytest

from agents import genome
from agents import store as agent_store
from p2pnode import dna as dna_mod
from p2pnode import joining, membership, records
from p2pnode.identity import Identity

A = Identity.from_seed(b"golden-a")
B = Identity.from_seed(b"golden-b")
T = 1_700_000_000_000
QVEC = b"\x00\x00\x80\x3f" + b"\x01" * 8  # a compact embedding: scale 1.0, 8 codes

# sha256 of each wire, as made before the shared helpers existed
PINNED = {
    "memory": "365a1a99ccc107561a920c0961b4ea7713f7f0e0e35274a9c30970f652dfede0",
    "vote": "a953b40a2edc540a5fb024c37a320d5655de0c3d6e9adb60b8592a55be12ac7f",
    "peer": "9d68e52a57aacdcc06a78a3b33cbc4290bce669b9d7bf97cc09ff9795994dd89",
    "card": "63ff3d278aa4faa33553a4959a9246948f232793d21b9a110f40705ad31eff49",
    "dna": "93129902487890082d7924eca66ae74298d3b1583f5b45198d5a928ccbe83a3b",
    "chain": "c42a30d4233130a36db08661c5c66a50bcfa0c5152b06d03fedce73a6bc65fef",
    "cert": "5da0c24d39c032d521ab1e4503f62f6378e56b7ac68debc0821ee6bb99615cfa",
    "pass": "1ea93d733e762fd5c743774870d053b89f17f62e7cbe9bfc9d19a7cb193df0e3",
    "revoke": "e7ac062d6296a9e11c565c0db0673bb4afb6e0250eeacb1c6c8b1ff5c6a14dda",
    "join_request": "5946a52ce34d50de6ceb27306fc968ab84db08eece593bcd41187cf815e4a0d0",
    "join_answer": "66d2f3ace076f73862f6cac2a3e19ae3119eff48106b2a496e2bf0883539ed2f",
    "lineage": "2a2d52f97e0f70d7fc22befd8fea0098ed1d872dd407d2d1f8efd071a0d6712d",
    "steps": "7f0e2f345a31c438d445e6fb2107df63d7da7ef7c692b41234707de31d041456",
}


def _dna() -> tuple[dna_mod.Dna, dna_mod.Dna]:
    v1 = dna_mod.found(A, swarm="golden", encoder_name="e", encoder_sha256="ab" * 32, dim=384,
                       created_ms=T, seed=b"\x05" * 16)
    return v1, dna_mod.update(v1, A, {"division_threshold": 30}, T + 1)


def _cert() -> membership.Certificate:
    return membership.issue(A, swarm=_dna()[0].swarm_id, member=B.public_key, may_invite=True,
                            issued_ms=T + 2)


def _memory() -> records.MemoryRecord:
    return records.make_memory(A, question="q?", answer="a.",
                               embedding=np.linspace(-1, 1, 8, dtype=np.float32),
                               created_ms=T, origin="taught", dna_hash=b"\x01" * 32)


def _made_and_decoded() -> dict[str, tuple[bytes, Callable[[bytes], object]]]:
    v1, v2 = _dna()
    mem = _memory()
    founders = frozenset({A.public_key})
    return {
        "memory": (mem.wire, records.decode_memory),
        "vote": (records.make_vote(A, memory_id=mem.id, region=b"\x02" * 32, qvec=QVEC, up=1,
                                   down=0, seq=1, author=A.public_key).wire,
                 records.decode_vote),
        "peer": (records.make_peer(A, swarm=b"\x03" * 32, host="10.0.0.1", port=4000,
                                   capacity=4, seq=5).wire, records.decode_peer),
        "card": (records.make_agent_card(A, agent_id=b"\x04" * 32, swarm=b"\x03" * 32,
                                         generation=1, parent=b"", fitness=0.5,
                                         interactions=3, specialty=bytes(12), alive=True,
                                         seq=7).wire, records.decode_agent_card),
        "dna": (v1.wire, dna_mod.decode),
        "chain": (dna_mod.chain_wire([v1, v2]), lambda b: dna_mod.decode_chain(b, v1.swarm_id)),
        "cert": (_cert().wire, lambda b: membership.decode_certificate(b, now_ms=T + 9)),
        "pass": (membership.invited_pass(None, _cert(), B).wire,
                 lambda b: membership.decode_pass(b, swarm=v1.swarm_id, founders=founders,
                                                  puzzle_bits=0, now_ms=T + 9)),
        "revoke": (membership.revoke(A, swarm=v1.swarm_id, target=B.public_key, why="bye",
                                     at_ms=T + 3).wire,
                   lambda b: membership.decode_revocation(
                       b, swarm=v1.swarm_id, founders=founders, current_founders=founders,
                       now_ms=T + 9)),
        "join_request": (joining.join_request(B, b"\x06" * 16), joining.decode_join_request),
        "join_answer": (joining.join_answer([v1, v2], None, _cert()),
                        lambda b: joining.decode_join_answer(
                            b, invitation=joining.Invitation("10.0.0.1", 1, v1.swarm_id[:8],
                                                             b"\x06" * 16),
                            member=B.public_key, now_ms=T + 9)),
        "lineage": (genome.make_lineage(A, genome=b"genome-bytes", created_ms=T + 4).wire,
                    genome.decode_lineage),
        "steps": (agent_store.pack_steps([(1, 0.01), (2**63, 0.5)]), agent_store.unpack_steps),
    }


@pytest.mark.parametrize("kind", sorted(PINNED))
def test_wire_bytes_are_unchanged_and_decode(kind: str) -> None:
    data, decode = _made_and_decoded()[kind]
    assert hashlib.sha256(data).hexdigest() == PINNED[kind]
    assert decode(data)


def test_decoded_records_re_encode_to_the_same_bytes() -> None:
    made = _made_and_decoded()
    for kind, decode in [("memory", records.decode_memory), ("vote", records.decode_vote),
                         ("peer", records.decode_peer), ("card", records.decode_agent_card),
                         ("dna", dna_mod.decode), ("lineage", genome.decode_lineage)]:
        data = made[kind][0]
        assert decode(data).wire == data, kind  # type: ignore[attr-defined]
    mem = records.decode_memory(made["memory"][0])
    assert np.array_equal(records.MemoryRecord.stored_vector(mem.wire), mem.vector())
