"""Signed records: memories, per-voter vote entries and peer cards.

A record travels as ``msgpack([body, signature])`` where ``body`` is the
canonical msgpack of a fixed-order list and the signature covers a domain
prefix plus exactly those bytes. Decoding keeps the original body bytes: we
never verify a re-encoding of a parsed structure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack
import numpy as np

from p2pnode.errors import VerifyError
from p2pnode.identity import PUBLIC_KEY_BYTES, Identity, verify

MEMORY_DOMAIN = b"sporemind/memory/v1"
VOTE_DOMAIN = b"sporemind/vote/v1"
MAX_RECORD_BYTES = 64 * 1024
_VERSION = 1


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack_signed(data: bytes, what: str) -> tuple[bytes, bytes, list[object]]:
    """Split wire bytes into (body bytes, signature, decoded body list)."""
    if len(data) > MAX_RECORD_BYTES:
        raise VerifyError(f"{what} record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        outer = msgpack.unpackb(data, raw=False)
        body, sig = outer
        fields = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise VerifyError(f"malformed {what} record: {exc}") from exc
    if not isinstance(body, bytes) or not isinstance(sig, bytes) or not isinstance(fields, list):
        raise VerifyError(f"malformed {what} record: wrong outer types")
    return body, sig, fields


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
        return _pack([self.body, self.signature])

    @property
    def id(self) -> bytes:
        """Content address: SHA-256 of the signed wire bytes."""
        return hashlib.sha256(self.wire).digest()

    def vector(self) -> np.ndarray:
        return np.frombuffer(self.embedding, dtype="<f2").astype(np.float32)


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


def decode_memory(data: bytes) -> MemoryRecord:
    """Parse and verify a memory record; raises VerifyError on anything wrong."""
    body, sig, f = _unpack_signed(data, "memory")
    if len(f) != 9 or f[0] != "memory" or f[1] != _VERSION:
        raise VerifyError("not a v1 memory record")
    _, _, question, answer, emb, author, created, origin, dna_hash = f
    if not (isinstance(question, str) and isinstance(answer, str) and isinstance(origin, str)
            and isinstance(emb, bytes) and isinstance(author, bytes)
            and isinstance(dna_hash, bytes) and isinstance(created, int)):
        raise VerifyError("memory record has fields of the wrong type")
    if len(author) != PUBLIC_KEY_BYTES or len(emb) % 2:
        raise VerifyError("memory record has a malformed author key or embedding")
    verify(author, MEMORY_DOMAIN, body, sig)
    return MemoryRecord(question, answer, emb, author, created, origin, dna_hash, body, sig)


@dataclass(frozen=True)
class VoteRecord:
    """A voter's signed counter for one memory in one question region."""

    memory_id: bytes
    voter: bytes
    region: bytes  # bucket key of the question (32 bytes)
    qvec: bytes  # compact embedding of the question (dht.compact)
    up: int
    down: int
    seq: int
    body: bytes
    signature: bytes

    @property
    def wire(self) -> bytes:
        return _pack([self.body, self.signature])


def make_vote(
    identity: Identity,
    *,
    memory_id: bytes,
    region: bytes,
    qvec: bytes,
    up: int,
    down: int,
    seq: int,
) -> VoteRecord:
    fields = ["vote", _VERSION, memory_id, identity.public_key, region, qvec, up, down, seq]
    body = _pack(fields)
    sig = identity.sign(VOTE_DOMAIN, body)
    return VoteRecord(memory_id, identity.public_key, region, qvec, up, down, seq, body, sig)


def decode_vote(data: bytes) -> VoteRecord:
    body, sig, f = _unpack_signed(data, "vote")
    if len(f) != 9 or f[0] != "vote" or f[1] != _VERSION:
        raise VerifyError("not a v1 vote record")
    _, _, memory_id, voter, region, qvec, up, down, seq = f
    if not (isinstance(memory_id, bytes) and isinstance(voter, bytes)
            and isinstance(region, bytes) and isinstance(qvec, bytes)
            and all(isinstance(n, int) and n >= 0 for n in (up, down, seq))):
        raise VerifyError("vote record has fields of the wrong type")
    if len(voter) != PUBLIC_KEY_BYTES or len(memory_id) != 32 or len(region) != 32:
        raise VerifyError("vote record has a malformed key, memory id or region")
    verify(voter, VOTE_DOMAIN, body, sig)
    return VoteRecord(memory_id, voter, region, qvec, up, down, seq, body, sig)  # type: ignore[arg-type]


PEER_DOMAIN = b"sporemind/peer/v1"
MAX_HOST_CHARS = 253


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
        return _pack([self.body, self.signature])

    @property
    def node_id(self) -> bytes:
        return hashlib.sha256(self.public_key).digest()


def make_peer(identity: Identity, *, swarm: bytes, host: str, port: int, capacity: int,
              seq: int) -> PeerRecord:
    body = _pack(["peer", _VERSION, identity.public_key, swarm, host, port, capacity, seq])
    sig = identity.sign(PEER_DOMAIN, body)
    return PeerRecord(identity.public_key, swarm, host, port, capacity, seq, body, sig)


def decode_peer(data: bytes) -> PeerRecord:
    body, sig, f = _unpack_signed(data, "peer")
    if len(f) != 8 or f[0] != "peer" or f[1] != _VERSION:
        raise VerifyError("not a v1 peer record")
    _, _, key, swarm, host, port, capacity, seq = f
    if not (isinstance(key, bytes) and len(key) == PUBLIC_KEY_BYTES
            and isinstance(swarm, bytes) and len(swarm) == 32
            and isinstance(host, str) and 0 < len(host) <= MAX_HOST_CHARS
            and type(port) is int and 0 < port < 65536
            and type(capacity) is int and capacity >= 0 and type(seq) is int and seq >= 0):
        raise VerifyError("peer record has fields of the wrong type")
    verify(key, PEER_DOMAIN, body, sig)
    return PeerRecord(key, swarm, host, port, capacity, seq, body, sig)


AGENT_CARD_DOMAIN = b"sporemind/agent-card/v1"
SPECIALTY_BYTES = 4096  # the compact specialty vector (dht.compact: int8 codes + scale)


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
        return _pack([self.body, self.signature])


def make_agent_card(identity: Identity, *, agent_id: bytes, swarm: bytes, generation: int,
                    parent: bytes, fitness: float, interactions: int, specialty: bytes,
                    alive: bool, seq: int) -> AgentCard:
    body = _pack(["agent-card", _VERSION, agent_id, identity.public_key, swarm, generation,
                  parent, float(fitness), interactions, specialty, alive, seq])
    sig = identity.sign(AGENT_CARD_DOMAIN, body)
    return AgentCard(agent_id, identity.public_key, swarm, generation, parent, float(fitness),
                     interactions, specialty, alive, seq, body, sig)


def decode_agent_card(data: bytes) -> AgentCard:
    body, sig, f = _unpack_signed(data, "agent card")
    if len(f) != 12 or f[0] != "agent-card" or f[1] != _VERSION:
        raise VerifyError("not a v1 agent card")
    _, _, agent_id, host, swarm, generation, parent, fit, interactions, spec, alive, seq = f
    if not (isinstance(agent_id, bytes) and len(agent_id) == 32
            and isinstance(host, bytes) and len(host) == PUBLIC_KEY_BYTES
            and isinstance(swarm, bytes) and len(swarm) == 32
            and isinstance(parent, bytes) and len(parent) in (0, 32)
            and type(generation) is int and generation >= 0
            and isinstance(fit, float) and -1e6 < fit < 1e6
            and type(interactions) is int and interactions >= 0
            and isinstance(spec, bytes) and len(spec) <= SPECIALTY_BYTES
            and isinstance(alive, bool) and type(seq) is int and seq >= 0):
        raise VerifyError("agent card has fields of the wrong type")
    verify(host, AGENT_CARD_DOMAIN, body, sig)
    return AgentCard(agent_id, host, swarm, generation, parent, fit, interactions, spec, alive,
                     seq, body, sig)
