"""Signed records: memories, per-voter vote entries, peer cards and agent cards.

A record travels as ``msgpack([body, signature])`` (p2pnode.identity's
`Envelope`) where ``body`` is the canonical msgpack of a fixed-order list and
the signature covers a domain prefix plus exactly those bytes. Decoding keeps
the original body bytes: we never verify a re-encoding of a parsed structure.
The signer's key is a field of the body (a record's id covers it), so the body
is decoded — by crdt.wire's bounded decoder, within MAX_RECORD_BYTES — and
checked before the signature.

Every field of a decoded record is hostile until checked, and each record
type is checked in one place, its ``decode_*`` (DESIGN.md 5b): exact sizes of
keys and vectors, finite floats, integers in [0, 2**63), times not ahead of
the holder's clock by more than MAX_SKEW_MS, host names, text. A refusal is a
:class:`RecordError` whose ``reason`` names the field and the check (a
counter key, from a fixed set). The ``make_*`` functions sign what they are
given (a spore's own records, and tests' hostile ones): the decoders judge.

Vectors travel as compact embeddings (dht.compact: a float32 scale, then
dim int8 codes). A caller that knows the swarm's dimension (the DNA's) passes
``dim`` and the size must be exact; without it the size must be that of some
dimension in [1, MAX_DIM].
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import struct
from dataclasses import dataclass

import numpy as np

from crdt import wire
from dht import compact
from p2pnode.errors import VerifyError
from p2pnode.identity import PUBLIC_KEY_BYTES, Envelope, Identity, open_envelope

__all__ = [
    "AGENT_CARD_DOMAIN", "MAX_CAPACITY", "MAX_DIM", "MAX_INT", "MAX_ORIGIN_CHARS",
    "MAX_RECORD_BYTES", "MAX_SKEW_MS", "MEMORY_DOMAIN", "PEER_DOMAIN", "TOMBSTONE_DOMAIN",
    "VOTE_DOMAIN", "AgentCard", "MemoryRecord", "PeerRecord", "RecordError", "Tombstone",
    "VoteRecord", "decode_agent_card", "decode_memory", "decode_peer", "decode_tombstone",
    "decode_vote", "make_agent_card", "make_memory", "make_peer", "make_tombstone", "make_vote",
]

MEMORY_DOMAIN = b"sporemind/memory/v1"
VOTE_DOMAIN = b"sporemind/vote/v1"
PEER_DOMAIN = b"sporemind/peer/v1"
AGENT_CARD_DOMAIN = b"sporemind/agent-card/v1"
TOMBSTONE_DOMAIN = b"sporemind/tombstone/v1"
MAX_RECORD_BYTES = 64 * 1024
MAX_INT = (1 << 63) - 1  # what SQLite and every msgpack reader can hold (as dht.codec)
MAX_DIM = 4096  # of any vector, when the caller does not know the swarm's
MAX_SKEW_MS = 5 * 60 * 1000  # how far ahead of the holder's clock a time may be
MAX_HOST_CHARS = 253  # a DNS name
MAX_ORIGIN_CHARS = 1024  # what Spore.teach keeps of an origin
MAX_CAPACITY = 1 << 16  # guest agents a card may offer (config caps a spore at 256)
MAX_FITNESS = 1e6
ID_BYTES = 32  # memory ids, regions, swarm ids, agent ids: SHA-256 sized
_VERSION = 1
_SCALE = struct.Struct("<f")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# Never in a label a terminal or a log shows: C0 and C1 controls, DEL, line and
# paragraph separators, zero-width and bidi controls. A fixed list, not
# unicodedata's: every spore must judge a record alike, whatever its Python.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


class RecordError(VerifyError):
    """A record refused by its decoder; `reason` names the field and the check
    (``qvec_size``, ``seq_range``, ``created_ms_future``, ``host_invalid``…)
    or the record (``record_malformed``, ``record_signature``…)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _pack(obj: object) -> bytes:
    return wire.pack(obj)


def _unpack_signed(data: bytes, what: str, tag: str, n_fields: int, *,
                   versions: dict[int, int] | None = None,
                   max_bytes: int = MAX_RECORD_BYTES) -> tuple[bytes, bytes, list[object]]:
    """Split wire bytes (at most `max_bytes`) into (body bytes, signature,
    decoded body list) of a v1 record of kind `tag` with `n_fields` fields (or,
    with `versions`, of any version it lists, with the number of fields it
    gives that version)."""
    if not isinstance(data, bytes):
        raise RecordError("record_malformed", f"a {what} record must be bytes")
    try:
        env = open_envelope(data, f"{what} record", max_bytes)
        fields = env.open_body(f"{what} record body")
    except wire.Oversized as exc:
        raise RecordError("record_too_large", str(exc)) from exc
    except wire.DecodeError as exc:
        raise RecordError("record_malformed", f"malformed {exc}") from exc
    if not isinstance(fields, list):
        raise RecordError("record_malformed", f"malformed {what} record: wrong outer types")
    shapes = versions or {_VERSION: n_fields}
    if len(fields) < 2 or fields[0] != tag or type(fields[1]) is not int \
            or shapes.get(fields[1]) != len(fields):
        raise RecordError("record_version", f"not a {what} record of a known version")
    return env.body, env.signature, fields


def _verify(key: bytes, domain: bytes, body: bytes, sig: bytes) -> None:
    try:
        Envelope(body, sig).verify(domain, key)
    except VerifyError as exc:
        raise RecordError("record_signature", str(exc)) from exc


def _bound(data: bytes, what: str) -> object:
    return wire.unpack(data, MAX_RECORD_BYTES, what)


def _wire(body: bytes, signature: bytes) -> bytes:
    return Envelope(body, signature).wire


# --- field checks: each raises RecordError("<field>_<check>", …) ----------------------

def _blob(value: object, field: str, sizes: tuple[int, ...]) -> bytes:
    if not isinstance(value, bytes):
        raise RecordError(f"{field}_type", f"{field} must be bytes")
    if len(value) not in sizes:
        raise RecordError(f"{field}_size", f"{field} is {len(value)} bytes, not "
                          + " or ".join(map(str, sizes)))
    return value


def _uint(value: object, field: str, limit: int = MAX_INT) -> int:
    # bool is an int in Python, but a msgpack `true` is no counter
    if type(value) is not int:
        raise RecordError(f"{field}_type", f"{field} must be an integer")
    if not 0 <= value <= limit:  # never format it: str() of a huge int raises
        raise RecordError(f"{field}_range", f"{field} is out of range [0, {limit}]")
    return value


def _time(value: object, field: str, now_ms: int | None) -> int:
    t = _uint(value, field)
    if now_ms is not None and t > now_ms + MAX_SKEW_MS:
        raise RecordError(f"{field}_future", f"{field} is {t - now_ms} ms ahead of this "
                          f"spore's clock (the limit is {MAX_SKEW_MS} ms)")
    return t


def _compact(value: object, field: str, dim: int | None, positive: bool) -> bytes:
    """A compact embedding (dht.compact) of `dim` values (or of some dimension
    in [1, MAX_DIM]) with a finite scale, > 0 if `positive` (a question's
    embedding is a unit vector: never all zero)."""
    if not isinstance(value, bytes):
        raise RecordError(f"{field}_type", f"{field} must be bytes")
    n = len(value) - compact.SCALE_BYTES
    if dim is not None and n != dim:
        raise RecordError(f"{field}_size", f"{field} is {len(value)} bytes, not "
                          f"{compact.packed_size(dim)}")
    if not 1 <= n <= MAX_DIM:
        raise RecordError(f"{field}_size", f"{field} is {len(value)} bytes, not "
                          f"{compact.packed_size(1)}..{compact.packed_size(MAX_DIM)}")
    (scale,) = _SCALE.unpack_from(value)
    if not math.isfinite(scale) or scale < 0 or (positive and scale == 0):
        raise RecordError(f"{field}_scale", f"{field} has an invalid scale {scale!r}")
    return value


def _text(value: object, field: str, max_chars: int, label: bool) -> str:
    """A string; a `label` (one line a log or terminal shows) has no control
    characters and at most `max_chars` characters."""
    if not isinstance(value, str):
        raise RecordError(f"{field}_type", f"{field} must be a string")
    if label and len(value) > max_chars:
        raise RecordError(f"{field}_size", f"{field} is over {max_chars} characters")
    if label and _CONTROL.search(value):
        raise RecordError(f"{field}_control", f"{field} has control characters")
    return value


def _host(value: object) -> str:
    """An IP address, or a DNS host name (ASCII letters, digits, '-', '.')."""
    if not isinstance(value, str):
        raise RecordError("host_type", "host must be a string")
    if not 0 < len(value) <= MAX_HOST_CHARS:
        raise RecordError("host_size", f"host must be 1..{MAX_HOST_CHARS} characters")
    if "%" not in value:  # no IPv6 zone: it names an interface of the writer's own
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
    # "127.1" or "1.2.3.4.5" are no names: resolvers read digits as an address
    if _HOSTNAME.fullmatch(value) is None or value.rstrip(".").rsplit(".", 1)[-1].isdigit():
        raise RecordError("host_invalid", "host is neither an IP address nor a DNS name")
    return value


def _embedding(value: object, dim: int | None) -> bytes:
    """float16 little-endian, `dim` values (or 1..MAX_DIM), all finite."""
    if not isinstance(value, bytes):
        raise RecordError("embedding_type", "embedding must be bytes")
    n, odd = divmod(len(value), 2)
    if dim is not None and (odd or n != dim):
        raise RecordError("embedding_size", f"embedding is {len(value)} bytes, not {2 * dim}")
    if odd or not 1 <= n <= MAX_DIM:
        raise RecordError("embedding_size", f"embedding is {len(value)} bytes, not an even "
                          f"number in 2..{2 * MAX_DIM}")
    if not np.isfinite(np.frombuffer(value, dtype="<f2")).all():
        raise RecordError("embedding_finite", "embedding has NaN or infinite values")
    return value


# --- memories ---------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryRecord:
    """An immutable, content-addressed memory (DESIGN.md section 3)."""

    question: str
    answer: str
    embedding: bytes  # float16 little-endian, dim values
    author: bytes  # Ed25519 public key
    created_ms: int
    origin: str
    dna_hash: bytes
    body: bytes
    signature: bytes

    @property
    def wire(self) -> bytes:
        return _wire(self.body, self.signature)

    @property
    def id(self) -> bytes:
        """Content address: SHA-256 of the signed wire bytes."""
        return hashlib.sha256(self.wire).digest()

    def vector(self) -> np.ndarray:
        return np.frombuffer(self.embedding, dtype="<f2").astype(np.float32)

    @staticmethod
    def stored_vector(wire: bytes) -> np.ndarray:
        """The embedding of a stored record's wire bytes as float32, read
        without checking it again (a record is decoded before it is stored)."""
        body = _bound(wire, "memory record")[0]  # type: ignore[index]
        return np.frombuffer(_bound(body, "memory body")[4], dtype="<f2").astype(np.float32)  # type: ignore[index]


def make_memory(
    identity: Identity,
    *,
    question: str,
    answer: str,
    embedding: np.ndarray,
    created_ms: int,
    origin: str,
    dna_hash: bytes,
) -> MemoryRecord:
    emb = np.asarray(embedding, dtype="<f2").tobytes()
    fields = ["memory", _VERSION, question, answer, emb, identity.public_key,
              created_ms, origin, dna_hash]
    body = _pack(fields)
    sig = identity.sign(MEMORY_DOMAIN, body)
    return MemoryRecord(question, answer, emb, identity.public_key, created_ms, origin,
                        dna_hash, body, sig)


def decode_memory(data: bytes, *, dim: int | None = None,
                  now_ms: int | None = None) -> MemoryRecord:
    """Parse, check and verify a memory record; RecordError on anything wrong.
    With `now_ms` (a holder storing it), a creation time ahead of it by more
    than MAX_SKEW_MS is refused."""
    body, sig, f = _unpack_signed(data, "memory", "memory", 9)
    _, _, question, answer, emb, author, created, origin, dna_hash = f
    rec = MemoryRecord(
        question=_text(question, "question", MAX_RECORD_BYTES, label=False),
        answer=_text(answer, "answer", MAX_RECORD_BYTES, label=False),
        embedding=_embedding(emb, dim),
        author=_blob(author, "author", (PUBLIC_KEY_BYTES,)),
        created_ms=_time(created, "created_ms", now_ms),
        origin=_text(origin, "origin", MAX_ORIGIN_CHARS, label=True),
        dna_hash=_blob(dna_hash, "dna_hash", (ID_BYTES,)),
        body=body, signature=sig)
    _verify(rec.author, MEMORY_DOMAIN, body, sig)
    return rec


# --- votes ------------------------------------------------------------------------------

# A vote body's version → its number of fields. Version 2 adds the author of
# the memory voted on (agents.trust credits an author with the up votes its
# memories earned); version 1 bodies, still held in gossip stores, decode with
# an unknown author (b"").
_VOTE_FIELDS = {1: 9, 2: 10}
_VOTE_VERSION = 2


@dataclass(frozen=True)
class VoteRecord:
    """A voter's signed counter for one memory in one question region."""

    memory_id: bytes
    voter: bytes
    region: bytes  # the question's region key (32 bytes, p2pnode.regions)
    qvec: bytes  # compact embedding of the question (dht.compact)
    up: int
    down: int
    seq: int
    author: bytes  # the memory's author as the voter read it: 32 bytes, or b"" if unknown
    body: bytes
    signature: bytes

    @property
    def wire(self) -> bytes:
        return _wire(self.body, self.signature)


def make_vote(
    identity: Identity,
    *,
    memory_id: bytes,
    region: bytes,
    qvec: bytes,
    up: int,
    down: int,
    seq: int,
    author: bytes = b"",
) -> VoteRecord:
    fields = ["vote", _VOTE_VERSION, memory_id, identity.public_key, region, qvec, up, down, seq,
              author]
    body = _pack(fields)
    sig = identity.sign(VOTE_DOMAIN, body)
    return VoteRecord(memory_id, identity.public_key, region, qvec, up, down, seq, author, body,
                      sig)


def decode_vote(data: bytes, *, dim: int | None = None) -> VoteRecord:
    """Parse, check and verify a vote entry; RecordError on anything wrong.
    Its counters are bounded by its seq (each rating raises seq by one); its
    author is a key or b"" (and b"" in a version 1 body, which has none)."""
    body, sig, f = _unpack_signed(data, "vote", "vote", _VOTE_FIELDS[_VOTE_VERSION],
                                  versions=_VOTE_FIELDS)
    _, _, memory_id, voter, region, qvec, up, down, seq, *rest = f
    last = _uint(seq, "seq")
    rec = VoteRecord(
        memory_id=_blob(memory_id, "memory_id", (ID_BYTES,)),
        voter=_blob(voter, "voter", (PUBLIC_KEY_BYTES,)),
        region=_blob(region, "region", (ID_BYTES,)),
        qvec=_compact(qvec, "qvec", dim, positive=True),
        up=_uint(up, "up", last), down=_uint(down, "down", last), seq=last,
        author=_blob(rest[0], "author", (0, PUBLIC_KEY_BYTES)) if rest else b"",
        body=body, signature=sig)
    _verify(rec.voter, VOTE_DOMAIN, body, sig)
    return rec


# --- peer cards -------------------------------------------------------------------------

@dataclass(frozen=True)
class PeerRecord:
    """A spore's signed card: where it listens (UDP DHT and TCP peer HTTP share
    host and port), its spare capacity for guest agents, and a seq that only grows."""

    public_key: bytes
    swarm: bytes
    host: str
    port: int
    capacity: int
    seq: int
    body: bytes
    signature: bytes

    @property
    def wire(self) -> bytes:
        return _wire(self.body, self.signature)

    @property
    def node_id(self) -> bytes:
        return hashlib.sha256(self.public_key).digest()


def make_peer(identity: Identity, *, swarm: bytes, host: str, port: int, capacity: int,
              seq: int) -> PeerRecord:
    body = _pack(["peer", _VERSION, identity.public_key, swarm, host, port, capacity, seq])
    sig = identity.sign(PEER_DOMAIN, body)
    return PeerRecord(identity.public_key, swarm, host, port, capacity, seq, body, sig)


def decode_peer(data: bytes, *, now_ms: int | None = None) -> PeerRecord:
    """Parse, check and verify a peer card; RecordError on anything wrong. Its
    seq is its writer's clock (ms): with `now_ms`, one too far ahead is refused."""
    body, sig, f = _unpack_signed(data, "peer", "peer", 8)
    _, _, key, swarm, host, port, capacity, seq = f
    port_n = _uint(port, "port", 65535)
    if port_n == 0:
        raise RecordError("port_range", "port is out of range [1, 65535]")
    rec = PeerRecord(
        public_key=_blob(key, "key", (PUBLIC_KEY_BYTES,)),
        swarm=_blob(swarm, "swarm", (ID_BYTES,)),
        host=_host(host), port=port_n,
        capacity=_uint(capacity, "capacity", MAX_CAPACITY),
        seq=_time(seq, "seq", now_ms),
        body=body, signature=sig)
    _verify(rec.public_key, PEER_DOMAIN, body, sig)
    return rec


# --- agent cards ------------------------------------------------------------------------

@dataclass(frozen=True)
class AgentCard:
    """A host's signed entry in the agent registry: one agent it runs (or ran:
    ``alive`` false once it died), with what askers and placement need."""

    agent_id: bytes
    host: bytes  # the hosting spore's public key: the signer
    swarm: bytes
    generation: int
    parent: bytes  # b"" for a founder agent
    fitness: float
    interactions: int
    specialty: bytes  # compact embedding of the queries it served well
    alive: bool
    seq: int
    body: bytes
    signature: bytes

    @property
    def wire(self) -> bytes:
        return _wire(self.body, self.signature)


def make_agent_card(identity: Identity, *, agent_id: bytes, swarm: bytes, generation: int,
                    parent: bytes, fitness: float, interactions: int, specialty: bytes,
                    alive: bool, seq: int) -> AgentCard:
    body = _pack(["agent-card", _VERSION, agent_id, identity.public_key, swarm, generation,
                  parent, float(fitness), interactions, specialty, alive, seq])
    sig = identity.sign(AGENT_CARD_DOMAIN, body)
    return AgentCard(agent_id, identity.public_key, swarm, generation, parent, float(fitness),
                     interactions, specialty, alive, seq, body, sig)


def decode_agent_card(data: bytes, *, dim: int | None = None,
                      now_ms: int | None = None) -> AgentCard:
    """Parse, check and verify an agent card; RecordError on anything wrong. Its
    specialty may be all zero (a fresh agent); its seq is the host's clock (ms)."""
    body, sig, f = _unpack_signed(data, "agent card", "agent-card", 12)
    _, _, agent_id, host, swarm, generation, parent, fit, interactions, spec, alive, seq = f
    if not isinstance(fit, float) or not -MAX_FITNESS < fit < MAX_FITNESS:  # NaN fails too
        raise RecordError("fitness_range", f"fitness must be a float within ±{MAX_FITNESS:g}")
    if not isinstance(alive, bool):
        raise RecordError("alive_type", "alive must be a boolean")
    card = AgentCard(
        agent_id=_blob(agent_id, "agent_id", (ID_BYTES,)),
        host=_blob(host, "host_key", (PUBLIC_KEY_BYTES,)),
        swarm=_blob(swarm, "swarm", (ID_BYTES,)),
        generation=_uint(generation, "generation"),
        parent=_blob(parent, "parent", (0, ID_BYTES)),
        fitness=fit, interactions=_uint(interactions, "interactions"),
        specialty=_compact(spec, "specialty", dim, positive=False),
        alive=alive, seq=_time(seq, "seq", now_ms),
        body=body, signature=sig)
    _verify(card.host, AGENT_CARD_DOMAIN, body, sig)
    return card


# --- tombstones -------------------------------------------------------------------------

@dataclass(frozen=True)
class Tombstone:
    """A memory's author asks every spore to forget it (p2pnode.forgetting).
    It names the author: a spore honours it only for a memory that author
    wrote (the record, or an index entry, says who), so anybody may sign one
    for any id and forget nothing of anyone else's."""

    memory_id: bytes
    author: bytes
    swarm: bytes
    forgotten_ms: int
    body: bytes
    signature: bytes

    @property
    def wire(self) -> bytes:
        return _wire(self.body, self.signature)


def make_tombstone(identity: Identity, *, memory_id: bytes, swarm: bytes,
                   forgotten_ms: int) -> Tombstone:
    body = _pack(["tombstone", _VERSION, memory_id, identity.public_key, swarm, forgotten_ms])
    sig = identity.sign(TOMBSTONE_DOMAIN, body)
    return Tombstone(memory_id, identity.public_key, swarm, forgotten_ms, body, sig)


def decode_tombstone(data: bytes, *, now_ms: int | None = None) -> Tombstone:
    """Parse, check and verify a tombstone; RecordError on anything wrong. With
    `now_ms`, a time ahead of it by more than MAX_SKEW_MS is refused."""
    body, sig, f = _unpack_signed(data, "tombstone", "tombstone", 6, max_bytes=1024)
    _, _, memory_id, author, swarm, at = f
    rec = Tombstone(
        memory_id=_blob(memory_id, "memory_id", (ID_BYTES,)),
        author=_blob(author, "author", (PUBLIC_KEY_BYTES,)),
        swarm=_blob(swarm, "swarm", (ID_BYTES,)),
        forgotten_ms=_time(at, "forgotten_ms", now_ms),
        body=body, signature=sig)
    _verify(rec.author, TOMBSTONE_DOMAIN, body, sig)
    return rec
