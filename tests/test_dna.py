"""The swarm DNA's lifecycle rules: new versions by founders, and which offered
version a spore takes (pure; no daemon)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest

from p2pnode import dna as dna_mod
from p2pnode.errors import ConfigError, StateError, VerifyError
from p2pnode.identity import Identity

ALICE = Identity.from_seed(b"alice")
BOB = Identity.from_seed(b"bob")
MALLORY = Identity.from_seed(b"mallory")


def _v1(identity: Identity = ALICE, swarm: str = "test") -> dna_mod.Dna:
    return dna_mod.found(identity, swarm=swarm, encoder_name="enc", encoder_sha256="ab" * 32,
                         dim=384, created_ms=5, seed=b"s" * 16)


def _resigned(identity: Identity, fields: dict[str, Any]) -> dna_mod.Dna:
    """A DNA with arbitrary fields, as a hostile or careless founder could sign it."""
    body = msgpack.packb(fields, use_bin_type=True)
    wire = msgpack.packb([body, identity.public_key, identity.sign(dna_mod.DNA_DOMAIN, body)])
    return dna_mod.decode(wire)


def test_v1_swarm_id_is_its_hash() -> None:
    v1 = _v1()
    assert v1.version == 1 and v1.swarm_id == v1.hash
    assert v1.show()["swarm_id"] == v1.hash.hex() and v1.show()["version"] == 1


def test_update_increments_the_version_and_keeps_the_swarm_id() -> None:
    v1 = _v1()
    v2 = dna_mod.update(v1, ALICE, {"division_threshold": 30}, created_ms=10)
    v3 = dna_mod.update(v2, ALICE, {"mutation_sigma": 0.05}, created_ms=20)
    assert (v2.version, v3.version) == (2, 3)
    assert v1.swarm_id == v2.swarm_id == v3.swarm_id
    assert len({v1.hash, v2.hash, v3.hash}) == 3
    assert v3.fields["previous"] == v2.hash.hex() and v3.fields["genesis"] == v1.hash.hex()
    assert v3.fields["division_threshold"] == 30 and v3.fields["mutation_sigma"] == 0.05
    assert v3.fields["lsh"] == v1.fields["lsh"] and v3.fields["created_ms"] == 20
    # what is written is what is read back, and verifies
    again = dna_mod.decode(v3.wire)
    assert again.swarm_id == v1.swarm_id and again.hash == v3.hash


def test_update_round_trips_through_the_state_dir(tmp_path: Path) -> None:
    v2 = dna_mod.update(_v1(), ALICE, {"fitness_half_life_days": 7}, created_ms=10)
    dna_mod.save(tmp_path, v2)
    loaded = dna_mod.load(tmp_path)
    assert loaded is not None and loaded.hash == v2.hash and loaded.version == 2
    assert loaded.fields["fitness_half_life_days"] == 7.0


def test_only_a_founder_can_update() -> None:
    with pytest.raises(StateError, match="only a founder"):
        dna_mod.update(_v1(), MALLORY, {"division_threshold": 30}, created_ms=10)


@pytest.mark.parametrize(("changes", "message"), [
    ({"lsh": {"tables": 1}}, "'lsh' is immutable"),
    ({"encoder": {}}, "'encoder' is immutable"),
    ({"replication": 5}, "'replication' is immutable"),
    ({"version": 9}, "'version' is immutable"),
    ({"colour": "blue"}, "'colour' is unknown"),
    ({}, "no change given"),
    ({"division_threshold": 20}, "already the DNA's"),
    ({"division_threshold": 0}, "integer >= 1"),
    ({"division_threshold": 2.5}, "integer >= 1"),
    ({"division_threshold": True}, "integer >= 1"),
    ({"division_threshold": "30"}, "integer >= 1"),
    ({"mutation_sigma": 0}, r"\(0, 1\]"),
    ({"mutation_sigma": 1.5}, r"\(0, 1\]"),
    ({"fitness_half_life_days": -1}, "> 0"),
    ({"fitness_half_life_days": float("inf")}, "> 0"),
    ({"founders": []}, "at least one founder"),
    ({"founders": ["zz" * 32]}, "64 hex"),
    ({"founders": "abc"}, "64 hex"),
])
def test_update_refuses_bad_changes(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dna_mod.update(_v1(), ALICE, changes, created_ms=10)


def test_founders_grow_and_a_new_founder_can_publish() -> None:
    v1 = _v1()
    v2 = dna_mod.update(v1, ALICE, {"founders": [ALICE.public_key.hex(),
                                                 BOB.public_key.hex().upper()]}, 10)
    assert v2.fields["founders"] == [ALICE.public_key.hex(), BOB.public_key.hex()]
    v3 = dna_mod.update(v2, BOB, {"division_threshold": 40}, created_ms=20)
    assert dna_mod.successor(v1, v2) and dna_mod.successor(v2, v3)


def test_successor_accepts_the_chain_and_skips() -> None:
    v1 = _v1()
    v2 = dna_mod.update(v1, ALICE, {"division_threshold": 30}, created_ms=10)
    v3 = dna_mod.update(v2, ALICE, {"mutation_sigma": 0.05}, created_ms=20)
    assert dna_mod.successor(v1, v2)
    assert dna_mod.successor(v2, v3)
    assert dna_mod.successor(v1, v3)


def test_successor_says_no_to_the_same_or_an_older_version() -> None:
    v1 = _v1()
    v2 = dna_mod.update(v1, ALICE, {"division_threshold": 30}, created_ms=10)
    assert not dna_mod.successor(v1, v1)
    assert not dna_mod.successor(v2, v2)
    assert not dna_mod.successor(v2, v1)


def test_two_founders_publishing_the_same_version_converge() -> None:
    base = dna_mod.update(_v1(), ALICE, {"founders": [ALICE.public_key.hex(),
                                                     BOB.public_key.hex()]}, 10)
    a = dna_mod.update(base, ALICE, {"division_threshold": 30}, created_ms=20)
    b = dna_mod.update(base, BOB, {"mutation_sigma": 0.5}, created_ms=20)
    assert a.version == b.version == 3
    low, high = sorted((a, b), key=lambda d: d.hash)
    assert dna_mod.successor(high, low) and not dna_mod.successor(low, high)


def test_successor_refuses_another_swarm() -> None:
    with pytest.raises(VerifyError, match="another swarm"):
        dna_mod.successor(_v1(), _v1(swarm="other"))
    with pytest.raises(VerifyError, match="another swarm"):
        dna_mod.successor(_v1(), _v1(BOB))


def test_successor_refuses_a_non_founder_naming_itself_founder() -> None:
    """Mallory copies v2, adds herself to the founders, and signs: decode passes
    (she is among the DNA's own founders), the swarm's founders do not."""
    v1 = _v1()
    v2 = dna_mod.update(v1, ALICE, {"division_threshold": 30}, created_ms=10)
    fields = {**v2.fields, "founders": [*v2.fields["founders"], MALLORY.public_key.hex()]}
    forged = _resigned(MALLORY, fields)
    assert forged.swarm_id == v1.swarm_id
    with pytest.raises(VerifyError, match="signed by a non-founder"):
        dna_mod.successor(v1, forged)


@pytest.mark.parametrize(("key", "value"), [
    ("lsh", {"tables": 1, "bits": 8, "probes": 1, "seed": "00" * 16}),
    ("encoder", {"name": "other", "sha256": "cd" * 32, "dim": 384}),
    ("replication", 1),
    ("swarm", "renamed"),
    ("protocol", 2),
    ("extra", 1),
])
def test_successor_refuses_a_changed_immutable_field(key: str, value: Any) -> None:
    v1 = _v1()
    v2 = dna_mod.update(v1, ALICE, {"division_threshold": 30}, created_ms=10)
    bad = _resigned(ALICE, {**v2.fields, key: value})
    with pytest.raises(VerifyError, match=f"changes immutable field {key}"):
        dna_mod.successor(v1, bad)


def test_successor_refuses_no_founder_left_or_a_bad_value() -> None:
    v2 = dna_mod.update(_v1(), ALICE, {"founders": [ALICE.public_key.hex(),
                                                   BOB.public_key.hex()]}, 10)
    with pytest.raises(VerifyError, match="not signed by one of its founders"):
        _resigned(ALICE, {**v2.fields, "version": 3, "previous": v2.hash.hex(),
                          "founders": []})  # no founder left: nobody could sign it
    shouting = _resigned(ALICE, {**v2.fields, "version": 3,
                                 "founders": [f.upper() for f in v2.fields["founders"]]})
    with pytest.raises(VerifyError, match="bad founders"):
        dna_mod.successor(v2, shouting)
    nonsense = _resigned(ALICE, {**v2.fields, "version": 3, "division_threshold": -1})
    with pytest.raises(VerifyError, match="bad division_threshold"):
        dna_mod.successor(v2, nonsense)


def test_founders_can_be_retired_while_one_remains() -> None:
    v1 = _v1()
    v2 = dna_mod.update(v1, ALICE, {"founders": [ALICE.public_key.hex(),
                                                 BOB.public_key.hex()]}, 10)
    v3 = dna_mod.update(v2, ALICE, {"founders": [BOB.public_key.hex()]}, 20)  # retires herself
    assert dna_mod.successor(v2, v3) and v3.founders == {BOB.public_key}
    with pytest.raises(StateError, match="only a founder"):
        dna_mod.update(v3, ALICE, {"division_threshold": 30}, 30)
    with pytest.raises(ConfigError, match="at least one founder"):
        dna_mod.update(v3, BOB, {"founders": []}, 30)
    assert dna_mod.founders_ever([v1, v2, v3]) == {ALICE.public_key, BOB.public_key}


def test_decode_refuses_a_later_version_without_lineage() -> None:
    fields = {**_v1().fields, "version": 2}
    body = msgpack.packb(fields, use_bin_type=True)
    wire = msgpack.packb([body, ALICE.public_key, ALICE.sign(dna_mod.DNA_DOMAIN, body)])
    with pytest.raises(VerifyError, match="malformed"):
        dna_mod.decode(wire)


# --- membership fields ----------------------------------------------------------------

def test_new_swarms_are_invite_and_open_ones_pay_a_puzzle() -> None:
    invite = _v1()
    assert (invite.membership, invite.puzzle_bits) == ("invite", 0)
    opened = dna_mod.found(ALICE, swarm="o", encoder_name="e", encoder_sha256="ab" * 32,
                           dim=8, created_ms=5, membership="open")
    assert (opened.membership, opened.puzzle_bits) == ("open", dna_mod.DEFAULT_PUZZLE_BITS)
    again = dna_mod.decode(opened.wire)
    assert (again.membership, again.puzzle_bits) == ("open", dna_mod.DEFAULT_PUZZLE_BITS)
    for membership, bits in [("closed", 0), ("open", 33), ("open", -1), ("invite", 4)]:
        with pytest.raises(ConfigError):
            dna_mod.found(ALICE, swarm="x", encoder_name="e", encoder_sha256="ab" * 32,
                          dim=8, created_ms=5, membership=membership, puzzle_bits=bits)


def test_a_v1_dna_without_membership_reads_as_open_without_a_puzzle() -> None:
    fields = {k: v for k, v in _v1().fields.items() if k not in ("membership", "puzzle_bits")}
    old = _resigned(ALICE, fields)
    assert (old.membership, old.puzzle_bits) == ("open", 0)
    v2 = dna_mod.update(old, ALICE, {"division_threshold": 30}, 10)
    assert dna_mod.successor(old, v2) and "membership" not in v2.fields
    added = _resigned(ALICE, {**v2.fields, "membership": "invite", "puzzle_bits": 0})
    with pytest.raises(VerifyError, match="immutable field membership"):
        dna_mod.successor(old, added)


@pytest.mark.parametrize(("membership", "bits"), [
    ("closed", 0), (None, 0), ("open", 33), ("open", -1), ("open", True), ("open", 2.0),
    ("open", "20"), ("invite", 3), ("open", None),
])
def test_decode_refuses_bad_membership_fields(membership: Any, bits: Any) -> None:
    fields = {**_v1().fields, "membership": membership, "puzzle_bits": bits}
    with pytest.raises(VerifyError, match="malformed"):
        _resigned(ALICE, fields)


def test_membership_is_immutable() -> None:
    v1 = _v1()
    with pytest.raises(ConfigError, match="'membership' is immutable"):
        dna_mod.update(v1, ALICE, {"membership": "open"}, 10)
    v2 = dna_mod.update(v1, ALICE, {"division_threshold": 30}, 10)
    with pytest.raises(VerifyError, match="immutable field membership"):
        dna_mod.successor(v1, _resigned(ALICE, {**v2.fields, "membership": "open"}))
    o1 = dna_mod.found(ALICE, swarm="o", encoder_name="e", encoder_sha256="ab" * 32, dim=8,
                       created_ms=5, membership="open", puzzle_bits=8)
    o2 = dna_mod.update(o1, ALICE, {"division_threshold": 30}, 10)
    with pytest.raises(VerifyError, match="immutable field puzzle_bits"):
        dna_mod.successor(o1, _resigned(ALICE, {**o2.fields, "puzzle_bits": 1}))


# --- the chain of versions ------------------------------------------------------------

def _three() -> list[dna_mod.Dna]:
    """v2 adds founder Bob, v3 is signed by Bob."""
    v1 = _v1()
    v2 = dna_mod.update(v1, ALICE, {"founders": [ALICE.public_key.hex(),
                                                 BOB.public_key.hex()]}, 10)
    return [v1, v2, dna_mod.update(v2, BOB, {"division_threshold": 40}, 20)]


def test_a_spore_at_v1_verifies_v3_through_the_chain() -> None:
    v1, v2, v3 = _three()
    with pytest.raises(VerifyError, match="non-founder"):
        dna_mod.successor(v1, v3)  # alone, v3's signer is no founder v1 knows
    chain = dna_mod.decode_chain(dna_mod.chain_wire([v1, v2, v3]), v1.swarm_id)
    assert [d.hash for d in chain] == [v1.hash, v2.hash, v3.hash]
    assert dna_mod.newest_from(v1, chain) == v3 and dna_mod.newest_from(v2, chain) == v3
    assert dna_mod.newest_from(v3, chain) is None
    assert dna_mod.newest_from(v3, chain[:2]) is None


def test_a_forged_or_missing_link_is_refused() -> None:
    v1, v2, v3 = _three()
    with pytest.raises(VerifyError, match="breaks after version 1"):
        dna_mod.decode_chain(dna_mod.chain_wire([v1, v3]), v1.swarm_id)
    with pytest.raises(VerifyError, match="does not start"):
        dna_mod.decode_chain(dna_mod.chain_wire([v2, v3]), v1.swarm_id)
    with pytest.raises(VerifyError, match="does not start"):
        dna_mod.decode_chain(dna_mod.chain_wire([v1, v2, v3]), b"\x00" * 32)
    # Mallory names herself founder in a v2 of her own: v1 never made her one
    forged = _resigned(MALLORY, {**v2.fields, "founders": [MALLORY.public_key.hex()]})
    forged3 = dna_mod.update(forged, MALLORY, {"division_threshold": 50}, 30)
    with pytest.raises(VerifyError, match=r"version 2 does not follow|non-founder"):
        dna_mod.decode_chain(dna_mod.chain_wire([v1, forged, forged3]), v1.swarm_id)
    for junk in [b"", b"\x90", b"\xc0", msgpack.packb([b"x"]), b"\x00" * (2 << 20),
                 msgpack.packb([v1.wire] * (dna_mod.MAX_VERSIONS + 1))]:
        with pytest.raises(VerifyError):
            dna_mod.decode_chain(junk, v1.swarm_id)


def test_a_fork_by_a_retired_founder_is_refused() -> None:
    """Alice retires Bob in v3; Bob, from v2, publishes his own v3 and v4."""
    v1, v2, _ = _three()
    v3 = dna_mod.update(v2, ALICE, {"founders": [ALICE.public_key.hex()]}, 20)
    b3 = dna_mod.update(v2, BOB, {"founders": [BOB.public_key.hex()]}, 21)
    b4 = dna_mod.update(b3, BOB, {"division_threshold": 41}, 22)
    theirs = dna_mod.decode_chain(dna_mod.chain_wire([v1, v2, b3, b4]), v1.swarm_id)
    with pytest.raises(VerifyError, match="non-founder"):
        dna_mod.newest_from(v3, theirs)
    # two founders' same-version tie: the smaller hash, or the longer chain, wins
    a3 = dna_mod.update(v2, ALICE, {"division_threshold": 33}, 20)
    c3 = dna_mod.update(v2, BOB, {"division_threshold": 34}, 20)
    low, high = sorted((a3, c3), key=lambda d: d.hash)
    assert dna_mod.newest_from(high, [v1, v2, low]) == low
    assert dna_mod.newest_from(low, [v1, v2, high]) is None
    assert dna_mod.newest_from(a3, theirs) == b4
    with pytest.raises(VerifyError, match="forks before"):
        dna_mod.newest_from(b4, [v1, v2, v3, dna_mod.update(v3, ALICE, {"mutation_sigma": 0.5},
                                                            30)])


def test_extend_and_the_chain_file(tmp_path: Path) -> None:
    v1, v2, v3 = _three()
    assert dna_mod.extend([v1, v2], v3) == [v1, v2, v3]
    assert dna_mod.extend([v1], v3) is None  # a gap: fetch the peer's chain
    assert dna_mod.load_chain(tmp_path) == []
    dna_mod.save(tmp_path, v1)
    assert dna_mod.load_chain(tmp_path) == [v1]  # a v1 swarm from before chains
    dna_mod.save_chain(tmp_path, [v1, v2, v3])
    assert (tmp_path / "dna-chain.bin").exists()
    assert dna_mod.load(tmp_path) == v3 and dna_mod.load_chain(tmp_path) == [v1, v2, v3]
    dna_mod.save(tmp_path, v2)  # a crash between the two writes: dna.bin behind
    assert dna_mod.load_chain(tmp_path) == [v1, v2]
    dna_mod.save_chain(tmp_path, [v1, v2])
    dna_mod.save(tmp_path, v3)  # dna.bin written alone, one step on
    assert dna_mod.load_chain(tmp_path) == [v1, v2, v3]
    (tmp_path / "dna-chain.bin").write_bytes(dna_mod.chain_wire([v1, v3]))
    with pytest.raises(StateError, match=r"dna-chain\.bin"):
        dna_mod.load_chain(tmp_path)
