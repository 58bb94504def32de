"""The one bounded msgpack decoder (crdt.wire) and the one signed envelope
(p2pnode.identity): limits checked before decoding, bombs refused, strict
types, canonical bytes where asked, and signatures bound to their domain.
Each codec maps their errors to its own typed error."""

from __future__ import annotations

import contextlib
import struct
import time

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import genome
from agents.store import MAX_STEPS, pack_steps, unpack_steps
from crdt import sync, wire
from dht import guard
from p2pnode import dna as dna_mod
from p2pnode import joining, membership, records
from p2pnode.errors import VerifyError
from p2pnode.identity import (
    Envelope,
    Identity,
    envelope_of,
    open_envelope,
    seal,
)
from p2pnode.records import MEMORY_DOMAIN, VOTE_DOMAIN, RecordError

ALICE = Identity.from_seed(b"wire-alice")
MALLORY = Identity.from_seed(b"wire-mallory")
DOMAIN = b"sporemind/test/v1"


def _refused(data: object, *, max_bytes: int = 1 << 16, **limits: int) -> str:
    with pytest.raises(wire.DecodeError) as info:
        wire.unpack(data, max_bytes, "thing", **limits)  # type: ignore[arg-type]
    assert str(info.value).startswith("thing: ")  # names what was being decoded
    return str(info.value)


# --- the bounded decoder ---------------------------------------------------------------

def test_round_trip_of_what_codecs_send() -> None:
    value = [b"\x00" * 40, "text", 7, -3, 2.5, True, None, {"k": [1, 2]}, {b"b": b""}]
    assert wire.unpack(wire.pack(value), 1024, "thing") == value
    assert wire.pack(value) == msgpack.packb(value, use_bin_type=True)  # the same bytes


def test_size_is_checked_before_anything_is_decoded() -> None:
    junk = b"\xc1" * 5000  # never valid msgpack: a decode would say so, not the size
    with pytest.raises(wire.Oversized, match="5000 bytes exceeds 4999"):
        wire.unpack(junk, 4999, "thing")
    assert not isinstance(_refused(junk[:10]), wire.Oversized)
    fits = wire.pack(b"x" * 100)
    assert wire.unpack(fits, len(fits), "thing") == b"x" * 100
    with pytest.raises(wire.Oversized):
        wire.unpack(fits, len(fits) - 1, "thing")


@pytest.mark.parametrize("header", [
    b"\xdd\xff\xff\xff\xff",  # array32 of 4 G items
    b"\xdf\xff\xff\xff\xff",  # map32 of 4 G entries
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GB
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GB
    b"\xc9\xff\xff\xff\xff\x01",  # ext32 of 4 GB
])
def test_length_bombs_are_refused_at_their_header(header: bytes) -> None:
    start = time.perf_counter()
    _refused(header + b"\x00" * 64)
    assert time.perf_counter() - start < 0.05  # nothing was allocated for 4 G of anything


def test_depth_bombs_are_a_decode_error_not_a_crash() -> None:
    deep = b"\x91" * 100_000 + b"\xc0"  # [[[[…nil…]]]], far past msgpack's stack
    assert "StackError" in _refused(deep, max_bytes=len(deep))
    maps = b"\x81\xa1k" * 5_000 + b"\xc0"
    _refused(maps, max_bytes=len(maps))
    ok = b"\x91" * 100 + b"\xc0"  # the shallow nesting codecs use still decodes
    assert wire.unpack(ok, 200, "thing") is not None


def test_each_named_limit_is_enforced() -> None:
    five = wire.pack([1, 2, 3, 4, 5])
    assert wire.unpack(five, 100, "thing", max_len=5) == [1, 2, 3, 4, 5]
    assert "max_array_len" in _refused(five, max_len=4)
    mapped = wire.pack({"a": 1, "b": 2})
    assert "max_map_len" in _refused(mapped, max_len=64, max_map=1)
    assert "max_str_len" in _refused(wire.pack("x" * 65), max_str=64)
    assert "max_bin_len" in _refused(wire.pack(b"x" * 65), max_bin=64)
    # binaries default to the string limit, and each may be set apart
    assert "max_bin_len" in _refused(wire.pack(b"x" * 65), max_str=64)
    assert wire.unpack(wire.pack(b"x" * 65), 100, "thing", max_str=64, max_bin=65)
    # a nested list counts against the same limit as the outer one
    assert "max_array_len" in _refused(wire.pack([[1, 2, 3]]), max_len=2)


@pytest.mark.parametrize(("data", "why"), [
    (b"\xd4\x01\x00", "ext"),  # an extension type: no codec of ours sends one
    (b"\xd6\xff\x00\x00\x00\x01", "ext"),  # msgpack's timestamp, an ext too
    (b"\xa2\xff\xfe", "utf-8"),  # a string that is not UTF-8
    (b"\x81\x01\x01", "map key"),  # {1: 1}: only str or bytes keys
    (b"\x81\x90\x01", "map key"),  # {[]: 1}
    (b"\x91\xc0\x00", "extra data"),  # trailing bytes after one value
    (b"\xc1", "FormatError"),  # the never-used byte
    (b"\x92\x01", "incomplete"),  # cut short
    (b"", "incomplete"),
])
def test_wrong_types_and_broken_encodings(data: bytes, why: str) -> None:
    assert why.lower() in _refused(data).lower()


@pytest.mark.parametrize("data", ["text", 12, None, [b"x"], bytearray(b"\x90")[0]])
def test_only_bytes_are_decoded(data: object) -> None:
    assert "expected bytes" in _refused(data)


def test_bytearray_and_memoryview_decode_like_bytes() -> None:
    raw = wire.pack([b"ab", 1])
    assert wire.unpack(bytearray(raw), 64, "t") == wire.unpack(memoryview(raw), 64, "t")


@pytest.mark.parametrize("variant", [
    b"\xcc\x01",  # 1 as uint8 (canonical: fixint 0x01)
    b"\xd0\x01",  # 1 as int8
    b"\xcd\x00\x01",  # 1 as uint16
    b"\xd9\x01a",  # "a" as str8 (canonical: fixstr)
    b"\xc5\x00\x01a",  # b"a" as bin16
    b"\xdc\x00\x01\x01",  # [1] as array16
    b"\xca" + struct.pack(">f", 1.5),  # 1.5 as float32 (we send float64)
])
def test_canonical_refuses_every_other_encoding_of_a_value(variant: bytes) -> None:
    value = wire.unpack(variant, 64, "thing")  # fine where canonicity is not required
    assert "not the canonical encoding" in _refused(variant, canonical=True)
    assert wire.unpack(wire.pack(value), 64, "thing", canonical=True) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(wire.DecodeError):  # anything else fails the test
        wire.unpack(data, 256, "fuzz", max_len=8, max_str=64)


def test_shape_helpers() -> None:
    assert wire.as_list([1, 2], "l", 2, exact=2) == [1, 2]
    for bad in ((1, 2), [1, 2, 3]):
        with pytest.raises(wire.DecodeError):
            wire.as_list(bad, "l", 2)
    with pytest.raises(wire.DecodeError, match="expected 3 fields"):
        wire.as_list([1, 2], "l", 3, exact=3)
    assert wire.as_bytes(b"abc", "b", 3, 3) == b"abc"
    for bad_b in ("abc", b"ab", b"abcd", bytearray(b"abc")):
        with pytest.raises(wire.DecodeError):
            wire.as_bytes(bad_b, "b", 3, 3)
    assert wire.as_int(5, "i", 0, 5) == 5
    for bad_i in (True, 6, -1, 5.0, "5"):
        with pytest.raises(wire.DecodeError):
            wire.as_int(bad_i, "i", 0, 5)


def test_crdt_sync_shares_the_decoder_and_its_error() -> None:
    assert sync.unpack is wire.unpack and sync.DecodeError is wire.DecodeError
    with pytest.raises(sync.DecodeError):
        sync.decode_digest(b"\xdd\xff\xff\xff\xff")


# --- the signed envelope ---------------------------------------------------------------

def test_sealed_envelope_travels_as_before() -> None:
    env = seal(ALICE, DOMAIN, b"body")
    assert env.wire == msgpack.packb([b"body", env.signature], use_bin_type=True)
    named = seal(ALICE, DOMAIN, b"body", with_signer=True)
    assert named.wire == msgpack.packb([b"body", ALICE.public_key, named.signature],
                                       use_bin_type=True)
    opened = open_envelope(named.wire, "thing", 1024, with_signer=True)
    assert opened == named
    opened.verify(DOMAIN)
    open_envelope(env.wire, "thing", 1024).verify(DOMAIN, ALICE.public_key)


def test_a_signature_over_another_domain_is_refused() -> None:
    env = seal(ALICE, b"sporemind/other/v1", b"body", with_signer=True)
    with pytest.raises(VerifyError, match="bad sporemind/test/v1 signature"):
        open_envelope(env.wire, "thing", 1024, with_signer=True).verify(DOMAIN)
    # a domain ends at its NUL: one holding a NUL could pass for a shorter one
    with pytest.raises(ValueError, match="NUL"):
        seal(ALICE, DOMAIN + b"\x00x", b"body")
    with pytest.raises(ValueError, match="NUL"):
        Envelope(b"body", env.signature, ALICE.public_key).verify(DOMAIN + b"\x00")


def test_another_key_a_changed_body_or_no_signer_is_refused() -> None:
    env = seal(ALICE, DOMAIN, b"body")
    with pytest.raises(VerifyError):
        env.verify(DOMAIN, MALLORY.public_key)
    with pytest.raises(VerifyError):
        Envelope(b"bodY", env.signature).verify(DOMAIN, ALICE.public_key)
    with pytest.raises(VerifyError, match="no signer"):
        env.verify(DOMAIN)
    swapped = Envelope(b"body", env.signature, MALLORY.public_key)  # a claimed signer
    with pytest.raises(VerifyError):
        swapped.verify(DOMAIN)
    with pytest.raises(VerifyError, match="length"):
        Envelope(b"body", env.signature[:63], ALICE.public_key).verify(DOMAIN)


@pytest.mark.parametrize("obj", [
    [b"body"], [b"body", b"sig", b"extra"], [b"body", "sig"], ["body", b"sig"],
    (b"body", b"sig"), {"body": b"sig"}, b"body", None,
])
def test_envelope_shapes_are_exact(obj: object) -> None:
    with pytest.raises(wire.DecodeError):
        envelope_of(obj, "thing")
    if not isinstance(obj, tuple):  # (msgpack sends a tuple as a list)
        with pytest.raises(wire.DecodeError):
            open_envelope(wire.pack(obj), "thing", 1024)


def test_envelope_with_signer_needs_three_bytes_parts() -> None:
    assert envelope_of([b"b", b"k", b"s"], "t", with_signer=True) == Envelope(b"b", b"s", b"k")
    for bad in ([b"b", b"s"], [b"b", 5, b"s"], [b"b", b"k", b"s", b"x"]):
        with pytest.raises(wire.DecodeError):
            envelope_of(bad, "t", with_signer=True)


def test_envelope_size_is_checked_before_decoding() -> None:
    big = seal(ALICE, DOMAIN, b"x" * 2000).wire
    with pytest.raises(wire.Oversized):
        open_envelope(big, "thing", len(big) - 1)
    assert open_envelope(big, "thing", len(big)).body == b"x" * 2000


def test_open_body_is_bounded_and_strict() -> None:
    env = seal(ALICE, DOMAIN, wire.pack(["kind", 1, b"x"]))
    assert env.open_body("body") == ["kind", 1, b"x"]
    assert Envelope(wire.pack([1, 2, 3]), b"").open_body("body", max_len=3) == [1, 2, 3]
    with pytest.raises(wire.DecodeError):
        Envelope(wire.pack([1, 2, 3]), b"").open_body("body", max_len=2)
    with pytest.raises(wire.DecodeError):
        Envelope(b"\xd4\x01\x00", b"").open_body("body")  # ext in a body


# --- each codec maps the shared errors to its own ------------------------------------

def _memory(identity: Identity = ALICE) -> records.MemoryRecord:
    return records.make_memory(identity, question="q", answer="a",
                               embedding=np.ones(8, np.float32), created_ms=1,
                               origin="taught", dna_hash=b"\x01" * 32)


def test_records_map_to_record_error_reasons() -> None:
    mem = _memory()
    with pytest.raises(RecordError) as info:
        records.decode_memory(b"\x91" * 70_000)
    assert info.value.reason == "record_too_large"
    for bad in (b"\xdd\xff\xff\xff\xff", b"\x91" * 5000 + b"\xc0", mem.wire + b"\x00",
                wire.pack([mem.body, mem.signature, b""]), wire.pack([mem.body])):
        with pytest.raises(RecordError) as info:
            records.decode_memory(bad)
        assert info.value.reason == "record_malformed", bad[:8]
    # a memory body signed as a vote: the domain refuses it
    as_vote = Envelope(mem.body, ALICE.sign(VOTE_DOMAIN, mem.body)).wire
    with pytest.raises(RecordError) as info:
        records.decode_memory(as_vote)
    assert info.value.reason == "record_signature"
    assert records.decode_memory(Envelope(mem.body, ALICE.sign(MEMORY_DOMAIN, mem.body)).wire)


def test_a_pass_over_its_cap_is_refused_as_a_pass() -> None:
    with pytest.raises(RecordError) as info:
        membership.decode_pass(b"\x90" * (membership.MAX_PASS_BYTES + 1), swarm=b"\x00" * 32,
                               founders=frozenset(), puzzle_bits=0, now_ms=0)
    assert info.value.reason == "pass_malformed"


def _dna() -> dna_mod.Dna:
    return dna_mod.found(ALICE, swarm="w", encoder_name="e", encoder_sha256="ab" * 32, dim=8,
                         created_ms=1, seed=b"\x00" * 16)


def test_dna_signature_is_checked_before_its_body_is_decoded() -> None:
    dna = _dna()
    assert dna_mod.decode(dna.wire) == dna
    junk = b"\xc1 not msgpack"
    forged = wire.pack([junk, ALICE.public_key, MALLORY.sign(dna_mod.DNA_DOMAIN, junk)])
    with pytest.raises(VerifyError, match="bad sporemind/dna/v1 signature"):
        dna_mod.decode(forged)  # refused by its signature: the junk was never parsed
    signed_junk = wire.pack([junk, ALICE.public_key, ALICE.sign(dna_mod.DNA_DOMAIN, junk)])
    with pytest.raises(VerifyError, match="malformed swarm DNA"):
        dna_mod.decode(signed_junk)
    other = wire.pack([dna.body, ALICE.public_key, ALICE.sign(MEMORY_DOMAIN, dna.body)])
    with pytest.raises(VerifyError, match="signature"):
        dna_mod.decode(other)
    with pytest.raises(VerifyError, match="malformed swarm DNA"):
        dna_mod.decode(wire.pack([dna.body, dna.signature]))  # the signer is missing


def test_dna_chain_limits_hold() -> None:
    with pytest.raises(VerifyError, match="malformed DNA chain"):
        dna_mod.chain_wires(b"\xdc\x01\x01" + b"\xc4\x00" * (dna_mod.MAX_VERSIONS + 1))
    with pytest.raises(VerifyError, match="at most"):
        dna_mod.chain_wires(b"\x90" * (dna_mod.MAX_CHAIN_BYTES + 1))
    assert dna_mod.chain_wires(dna_mod.chain_wire([_dna()])) == [_dna().wire]


def test_join_codecs_map_to_join_malformed() -> None:
    for bad in (b"\xdd\xff\xff\xff\xff", b"x" * (joining.MAX_JOIN_REQUEST + 1),
                wire.pack([b"t", b"k"])):
        with pytest.raises(RecordError) as info:
            joining.decode_join_request(bad)
        assert info.value.reason == "join_malformed"


def test_lineage_maps_to_verify_error_and_keeps_its_domain() -> None:
    lineage = genome.make_lineage(ALICE, genome=b"g", created_ms=1)
    assert genome.decode_lineage(lineage.wire) == lineage
    with pytest.raises(VerifyError, match="malformed agent lineage"):
        genome.decode_lineage(b"\x92" + b"\xc4\x00" * 600)
    with pytest.raises(VerifyError, match="malformed agent lineage"):
        genome.decode_lineage(wire.pack([lineage.body]))
    as_memory = Envelope(lineage.body, ALICE.sign(MEMORY_DOMAIN, lineage.body)).wire
    with pytest.raises(VerifyError, match="signature"):
        genome.decode_lineage(as_memory)


def test_stored_steps_and_datagrams_stay_value_errors() -> None:
    steps = [(i, 0.01) for i in range(MAX_STEPS)]
    assert unpack_steps(pack_steps(steps)) == tuple(steps)
    with pytest.raises(ValueError, match="malformed mutation steps"):
        unpack_steps(pack_steps([*steps, (1, 0.01)]))
    with pytest.raises(ValueError, match="malformed mutation steps"):
        unpack_steps(b"\xd4\x01\x00")
    with pytest.raises(ValueError, match="max_str_len"):
        guard.unpack(guard.pack(["x" * 65, []]))
    assert guard.unpack(guard.pack(["store", [b"k" * 32, b"v" * guard.MAX_VALUE]]))
    with pytest.raises(ValueError, match="max_map_len"):
        guard.unpack(guard.pack({str(i): i for i in range(5)}))
    with pytest.raises(ValueError, match="exceeds"):
        guard.unpack(b"\x00" * (guard.MAX_BODY + 1))
