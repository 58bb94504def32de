"""Every field of every signed record is hostile until its decoder checked it.

A member with the DNA signs whatever it likes with the project's own signer
(NOTES.md, "Lessons from attacking the daemon"): 0-byte or 1,000-byte vectors,
NaN and infinite scales, integers of 64 bits or negative, times in 4e18,
control characters in host names. Whatever the fields, the only outcomes of a
decoder are a record every consumer can use as is, or a VerifyError whose
`reason` names what failed.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dht import compact
from p2pnode import records
from p2pnode.errors import VerifyError
from p2pnode.identity import Identity
from p2pnode.records import (
    MAX_CAPACITY,
    MAX_INT,
    MAX_SKEW_MS,
    RecordError,
    decode_agent_card,
    decode_memory,
    decode_peer,
    decode_vote,
)

DIM = 384
NOW = 1_800_000_000_000
ME = Identity.from_seed(b"hostile writer")
EXAMPLES = settings(max_examples=300, deadline=None)
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def _signed(domain: bytes, fields: list[Any], signer: Identity = ME) -> bytes:
    """Raw fields signed as a record is (make_* would refuse nothing, but these
    need fields no make_* takes: wrong types, extra lengths)."""
    body = msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb([body, signer.sign(domain, body)], use_bin_type=True)  # type: ignore[no-any-return]


def _outcome(decode: Callable[[bytes], Any], wire: bytes) -> Any:
    """The record, or None after a VerifyError with a reason; anything else fails."""
    try:
        record = decode(wire)
    except VerifyError as exc:
        refused: VerifyError | None = exc
    else:
        event("accepted")
        return record
    reason = getattr(refused, "reason", None)
    assert isinstance(reason, str) and reason.isidentifier(), (type(refused), refused)
    event(f"refused: {reason}")
    return None


# --- field values: each one sane, or (one time in four) hostile ------------------------

def field(sane: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]
          ) -> st.SearchStrategy[Any]:
    """So that whole records are often sane but for one or two fields."""
    return st.integers(0, 3).flatmap(lambda i: hostile if i == 0 else sane)


ints = st.one_of(st.integers(-(2**63), 2**64 - 1),  # what msgpack can carry
                 st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, -1, -(2**63)]),
                 st.booleans(), st.floats(), st.none(), st.binary(max_size=4))
small = st.integers(0, 1000)
times = field(st.integers(0, NOW + MAX_SKEW_MS), st.one_of(st.sampled_from(
    [NOW + MAX_SKEW_MS + 1, 4 * 10**18, 2**63 - 1, 2**63]), ints))
blobs = st.one_of(st.binary(max_size=1000), st.none(), st.text(max_size=8))
scales = st.floats(width=32).map(lambda x: struct.pack("<f", x))  # NaN, ±inf, 0, < 0
good_scales = st.floats(0.0078125, 1.0, width=32).map(lambda x: struct.pack("<f", x))


def compact_vectors(dim: int = DIM) -> st.SearchStrategy[Any]:
    def packed(scale: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
        return st.tuples(scale, st.binary(min_size=dim, max_size=dim)).map(b"".join)
    return field(packed(good_scales), st.one_of(packed(scales), blobs,
                                                st.sampled_from([b"", b"\x00" * 4])))


def ids(n: int = 32) -> st.SearchStrategy[Any]:
    return field(st.binary(min_size=n, max_size=n), blobs)


def counts(sane: st.SearchStrategy[int] = small) -> st.SearchStrategy[Any]:
    return field(sane, ints)


unit = np.ones(DIM, np.float32) / math.sqrt(DIM)
embeddings = field(st.just(unit.astype("<f2").tobytes()),
                   st.one_of(st.binary(min_size=2 * DIM, max_size=2 * DIM), blobs))
texts = field(st.text(max_size=200), st.one_of(
    st.text(st.characters(max_codepoint=0x9f), max_size=50), ints))
hosts = field(st.one_of(st.sampled_from(["127.0.0.1", "::1", "spore.local", "0.0.0.0"]),
                        st.from_regex(r"[a-z0-9][a-z0-9.\-]{0,68}", fullmatch=True)),
              st.one_of(st.sampled_from(["fe80::1%eth0", "a" * 254, "a\nb", "host\x1b[31m",
                                         "-x.example", "127.1", "1.2.3.4.5", "", "a..b"]),
                        st.text(max_size=300), ints))
keys = field(st.just(ME.public_key), ids())


# --- one property per record type ------------------------------------------------------

authors = field(st.sampled_from([b"", ME.public_key]), ids(31))


@EXAMPLES
@given(memory_id=ids(), voter=keys, region=ids(), qvec=compact_vectors(),
       up=counts(st.integers(0, 1)), down=counts(st.integers(0, 1)),
       seq=counts(st.integers(1, 2**63 - 1)), version=field(st.sampled_from([1, 2]), ints),
       author=st.one_of(authors, st.just(None)), dim=st.sampled_from([DIM, None]))
def test_a_vote_is_usable_or_refused_with_a_reason(memory_id: Any, voter: Any, region: Any,
                                                  qvec: Any, up: Any, down: Any, seq: Any,
                                                  version: Any, author: Any,
                                                  dim: int | None) -> None:
    """Version 1 bodies have 9 fields, version 2 a 10th, the memory's author
    (None here: a body without it, whatever its version)."""
    extra = [] if author is None else [author]
    wire = _signed(records.VOTE_DOMAIN, ["vote", version, memory_id, voter, region, qvec, up,
                                         down, seq, *extra])
    vote = _outcome(lambda w: decode_vote(w, dim=dim), wire)
    if vote is None:
        return
    assert len(vote.memory_id) == len(vote.region) == len(vote.voter) == 32
    assert 0 <= vote.up <= vote.seq <= MAX_INT and 0 <= vote.down <= vote.seq
    _, scale = compact.unpack(vote.qvec, DIM if dim else len(vote.qvec) - 4)
    assert math.isfinite(scale) and scale > 0  # a question's vector: the tally can use it
    assert (version, vote.author) in ((1, b""), (2, author)) and len(vote.author) in (0, 32)
    assert (author is None) == (version == 1)


@EXAMPLES
@given(key=keys, swarm=ids(), host=hosts, port=counts(st.integers(0, 70000)),
       capacity=counts(), seq=times)
def test_a_peer_card_is_usable_or_refused_with_a_reason(key: Any, swarm: Any, host: Any,
                                                       port: Any, capacity: Any,
                                                       seq: Any) -> None:
    wire = _signed(records.PEER_DOMAIN, ["peer", 1, key, swarm, host, port, capacity, seq])
    card = _outcome(lambda w: decode_peer(w, now_ms=NOW), wire)
    if card is None:
        return
    assert 0 < len(card.host) <= 253 and card.host.isprintable() and card.host.isascii()
    assert 1 <= card.port <= 65535 and 0 <= card.capacity <= MAX_CAPACITY
    assert 0 <= card.seq <= NOW + MAX_SKEW_MS


@EXAMPLES
@given(agent_id=ids(), host=keys, swarm=ids(), generation=counts(),
       parent=st.one_of(st.just(b""), ids()), fitness=field(st.floats(-1, 1), st.floats()),
       interactions=counts(), specialty=compact_vectors(),
       alive=field(st.booleans(), ints), seq=times)
def test_an_agent_card_is_usable_or_refused_with_a_reason(
        agent_id: Any, host: Any, swarm: Any, generation: Any, parent: Any, fitness: Any,
        interactions: Any, specialty: Any, alive: Any, seq: Any) -> None:
    wire = _signed(records.AGENT_CARD_DOMAIN, ["agent-card", 1, agent_id, host, swarm,
                                               generation, parent, fitness, interactions,
                                               specialty, alive, seq])
    card = _outcome(lambda w: decode_agent_card(w, dim=DIM, now_ms=NOW), wire)
    if card is None:
        return
    _, scale = compact.unpack(card.specialty, DIM)  # what the agents' ranking reads
    assert math.isfinite(scale) and scale >= 0 and math.isfinite(card.fitness)
    assert isinstance(card.alive, bool) and 0 <= card.seq <= NOW + MAX_SKEW_MS
    assert 0 <= card.generation <= MAX_INT and 0 <= card.interactions <= MAX_INT


@EXAMPLES
@given(question=texts, answer=texts, embedding=embeddings, author=keys, created=times,
       origin=field(st.just("taught"), texts), dna_hash=ids(),
       dim=st.sampled_from([DIM, None]))
def test_a_memory_is_usable_or_refused_with_a_reason(question: Any, answer: Any,
                                                    embedding: Any, author: Any, created: Any,
                                                    origin: Any, dna_hash: Any,
                                                    dim: int | None) -> None:
    wire = _signed(records.MEMORY_DOMAIN, ["memory", 1, question, answer, embedding, author,
                                           created, origin, dna_hash])
    rec = _outcome(lambda w: decode_memory(w, dim=dim, now_ms=NOW), wire)
    if rec is None:
        return
    vector = rec.vector()
    assert np.isfinite(vector).all() and (dim is None or len(vector) == DIM)
    assert 0 <= rec.created_ms <= NOW + MAX_SKEW_MS and len(rec.dna_hash) == 32
    assert not CONTROL.search(rec.origin) and len(rec.origin) <= records.MAX_ORIGIN_CHARS


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_is_refused_with_a_reason_by_every_decoder(junk: bytes) -> None:
    for decode in (decode_vote, decode_peer, decode_agent_card, decode_memory):
        assert _outcome(decode, junk) is None
        assert _outcome(decode, msgpack.packb([junk, bytes(64)])) is None


# --- the shapes of the attacks, one by one ---------------------------------------------

GOOD_QVEC = struct.pack("<f", 0.01) + bytes(range(DIM // 2)) * 2


def _vote(version: Any = 2, *, with_author: bool | None = None, **change: Any) -> bytes:
    """A vote body of `version`, with the author field that version has
    (or not: `with_author`)."""
    fields = {"memory_id": b"m" * 32, "voter": ME.public_key, "region": b"r" * 32,
              "qvec": GOOD_QVEC, "up": 1, "down": 0, "seq": 1, "author": b"a" * 32} | change
    if not (version != 1 if with_author is None else with_author):
        del fields["author"]
    return _signed(records.VOTE_DOMAIN, ["vote", version, *fields.values()])


def _card(**change: Any) -> bytes:
    fields = {"agent_id": b"a" * 32, "host": ME.public_key, "swarm": b"s" * 32,
              "generation": 0, "parent": b"", "fitness": 0.5, "interactions": 3,
              "specialty": bytes(4 + DIM), "alive": True, "seq": NOW} | change
    return _signed(records.AGENT_CARD_DOMAIN, ["agent-card", 1, *fields.values()])


def _peer(**change: Any) -> bytes:
    fields = {"key": ME.public_key, "swarm": b"s" * 32, "host": "192.168.1.20",
              "port": 7151, "capacity": 4, "seq": NOW} | change
    return _signed(records.PEER_DOMAIN, ["peer", 1, *fields.values()])


@pytest.mark.parametrize(("wire", "reason"), [
    (_vote(qvec=b""), "qvec_size"),
    (_vote(qvec=GOOD_QVEC[:-1]), "qvec_size"),
    (_vote(qvec=struct.pack("<f", math.nan) + GOOD_QVEC[4:]), "qvec_scale"),
    (_vote(qvec=struct.pack("<f", 0.0) + GOOD_QVEC[4:]), "qvec_scale"),
    (_vote(seq=2**63), "seq_range"),
    (_vote(seq=2**63 - 1, up=2**63 - 1, down=2**64 - 1), "down_range"),
    (_vote(seq=1, down=10**15), "down_range"),
    (_vote(seq=-1), "seq_range"),
    (_vote(up=True), "up_type"),
    (_vote(author=b"a" * 31), "author_size"),
    (_vote(author=b"a" * 33), "author_size"),
    (_vote(author="a" * 32), "author_type"),
    (_vote(author=None), "author_type"),
    (_vote(1, with_author=True), "record_version"),  # a v1 body has no author
    (_vote(2, with_author=False), "record_version"),
    (_vote(3), "record_version"),
    (_vote(True), "record_version"),
])
def test_what_a_vote_is_refused_for(wire: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as refused:
        decode_vote(wire, dim=DIM)
    assert refused.value.reason == reason
    assert decode_vote(_vote(), dim=DIM).author == b"a" * 32
    assert decode_vote(_vote(author=b""), dim=DIM).author == b""
    assert decode_vote(_vote(1), dim=DIM).author == b""  # as stored by an older version


@pytest.mark.parametrize(("wire", "reason"), [
    (_card(specialty=b""), "specialty_size"),
    (_card(specialty=struct.pack("<f", math.inf) + bytes(DIM)), "specialty_scale"),
    (_card(fitness=math.nan), "fitness_range"),
    (_card(seq=4 * 10**18), "seq_future"),
])
def test_what_an_agent_card_is_refused_for(wire: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as refused:
        decode_agent_card(wire, dim=DIM, now_ms=NOW)
    assert refused.value.reason == reason
    assert decode_agent_card(_card(), dim=DIM, now_ms=NOW).specialty == bytes(4 + DIM)


@pytest.mark.parametrize(("wire", "reason"), [
    (_peer(host="evil\n2026-11-30 spore: all good"), "host_invalid"),
    (_peer(host="\x1b]0;owned\x07"), "host_invalid"),
    (_peer(host="x" * 254), "host_size"),
    (_peer(host="127.1"), "host_invalid"),
    (_peer(port=0), "port_range"),
    (_peer(port=65536), "port_range"),
    (_peer(capacity=2**62), "capacity_range"),
    (_peer(seq=NOW + MAX_SKEW_MS + 1), "seq_future"),
])
def test_what_a_peer_card_is_refused_for(wire: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as refused:
        decode_peer(wire, now_ms=NOW)
    assert refused.value.reason == reason
    for host in ("10.0.0.7", "::1", "pi-4.local", "spore.example.org."):
        assert decode_peer(_peer(host=host), now_ms=NOW).host == host


def test_a_memory_dated_in_the_future_or_with_a_broken_vector_is_refused() -> None:
    def memory(**change: Any) -> bytes:
        fields = {"question": "", "answer": "Use apt.", "embedding": unit.astype("<f2").tobytes(),
                  "author": ME.public_key, "created": NOW, "origin": "taught",
                  "dna_hash": b"d" * 32} | change
        return _signed(records.MEMORY_DOMAIN, ["memory", 1, *fields.values()])

    for wire, reason in [(memory(created=4 * 10**18), "created_ms_future"),
                         (memory(created=2**63), "created_ms_range"),
                         (memory(embedding=b""), "embedding_size"),
                         (memory(embedding=np.full(DIM, np.inf, "<f2").tobytes()),
                          "embedding_finite"),
                         (memory(origin="x\x1b[2J"), "origin_control"),
                         (memory(origin="evil\u202egnp.exe"), "origin_control")]:
        with pytest.raises(RecordError) as refused:
            decode_memory(wire, dim=DIM, now_ms=NOW)
        assert refused.value.reason == reason
    assert decode_memory(memory(), dim=DIM, now_ms=NOW).answer == "Use apt."
    assert decode_memory(memory(created=4 * 10**18)).created_ms == 4 * 10**18  # no clock: no skew


def test_a_signature_by_another_key_is_refused_as_such() -> None:
    other = Identity.from_seed(b"someone else")
    wire = _signed(records.VOTE_DOMAIN, ["vote", 1, b"m" * 32, ME.public_key, b"r" * 32,
                                         GOOD_QVEC, 1, 0, 1], signer=other)
    with pytest.raises(RecordError) as refused:
        decode_vote(wire)
    assert refused.value.reason == "record_signature"
