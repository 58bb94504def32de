"""Agent genomes: a tiny ONNX graph, its weights, its signed lineage, its state.

An agent maps a query embedding ``q`` [1, 384] to a response ``r`` [1, 384]
and scores candidates by cos(r, c). The graph is a residual bottleneck::

    q ─ MatMul W1 ─ Add b1 ─ Tanh ─ MatMul W2 ─ Add b2 ─┐
    └──────────────────────────────────────────── Add ──┴─ r

98,816 parameters (384·128 + 128 + 128·384 + 384), opset 17, IR version 8,
written by `model_bytes` (below). The skip connection is what lets a fresh
agent "do no harm": a 128-wide bottleneck without it can only return the
projection of q onto a 128-d subspace, whose ranking agrees with plain
cosine by a correlation of about √(128/384) ≈ 0.58 on isotropic vectors
(measured on MiniLM embeddings of real sentences: top-1 agreement 48%).
With it, ``initial`` sets W2 and the biases to tiny noise, so r ≈ q and a
new agent ranks like the encoder's cosine (top-1 agreement 100%); mutation
then moves it (Spearman against plain cosine on those embeddings: 0.99 at
σ = 0.003, 0.93 at 0.01, 0.66 at 0.03).

The genome is the ONNX bytes; their SHA-256 goes into the agent's signed
``Lineage`` (below). ``from_onnx`` is ``agents.guard.check``, which parses a
peer's model once, checks it and hands back its weights. The architecture
itself lives in agents.architecture, which both this module and the guard
read (the guard imports nothing of this module: no import cycle).

The bytes are written here (`model_bytes`, a few lines of protobuf) rather
than by ``onnx.helper``: the ``onnx`` package costs a spore ~8 MB of RSS, and
a spore that only starts, scores and divides its own agents never needs it
(only the guard, on a peer's genome, imports it). tests/test_idle_footprint.py
checks the bytes are ``onnx.helper``'s, byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agents.architecture import (
    DIM,
    HIDDEN,
    INITIALIZERS,
    INPUT,
    IR_VERSION,
    MAX_LINEAGE_BYTES,
    MAX_WEIGHT,
    NODES,
    OPSET,
    OUTPUT,
)
from agents.guard import check
from crdt import wire
from p2pnode.errors import VerifyError
from p2pnode.identity import PUBLIC_KEY_BYTES, Envelope, Identity, open_envelope, seal

__all__ = [
    "AGENT_DOMAIN",
    "DIM",
    "FLOAT",
    "HIDDEN",
    "INITIALIZERS",
    "INPUT",
    "INT64",
    "IR_VERSION",
    "MAX_LINEAGE_BYTES",
    "MAX_WEIGHT",
    "NODES",
    "OPSET",
    "OUTPUT",
    "Agent",
    "Lineage",
    "Weights",
    "decode_lineage",
    "from_onnx",
    "genome_sha256",
    "make_lineage",
    "model_bytes",
    "mutate",
    "new_agent",
    "to_onnx",
]

Array = npt.NDArray[np.float32]

AGENT_DOMAIN = b"sporemind/agent/v1"
_MAX_UINT = (1 << 63) - 1  # what SQLite and every msgpack reader can hold
_MAX_GENERATION = 1 << 31
_VERSION = 1
_ID_BYTES = 32

# Initial scales (see Weights.initial). W1's gain puts a unit query's hidden
# pre-activations near ±0.5, tanh's useful range, so a mutation of W2 has
# something q-dependent to mix; the noise keeps r within ~1% of q.
_W1_GAIN = 0.5 * np.sqrt(DIM)
_INIT_NOISE = 1e-4


@dataclass(frozen=True)
class Weights:
    """An agent's parameters, float32, shaped as ``INITIALIZERS`` says."""

    w1: Array
    b1: Array
    w2: Array
    b2: Array

    def __post_init__(self) -> None:
        for name, arr in zip(INITIALIZERS, self.arrays(), strict=True):
            if arr.shape != INITIALIZERS[name] or arr.dtype != np.float32:
                raise ValueError(f"{name} must be float32 {INITIALIZERS[name]}, got "
                                 f"{arr.dtype} {arr.shape}")

    def arrays(self) -> tuple[Array, Array, Array, Array]:
        return self.w1, self.b1, self.w2, self.b2

    @classmethod
    def initial(cls, rng: np.random.Generator) -> Weights:
        """A fresh agent whose response is the query within ~1% (r ≈ q).

        W1 is a random orthonormal projection (QR of a Gaussian) scaled by
        ``0.5·√384``; W2, b1 and b2 are N(0, 1e-4²). The sizes are fixed
        (384, 128): the guard and the pool accept no other.
        """
        basis, _ = np.linalg.qr(rng.standard_normal((DIM, HIDDEN)))
        noise = _INIT_NOISE
        return cls(
            w1=(basis * _W1_GAIN).astype(np.float32),
            b1=(noise * rng.standard_normal(HIDDEN)).astype(np.float32),
            w2=(noise * rng.standard_normal((HIDDEN, DIM))).astype(np.float32),
            b2=(noise * rng.standard_normal(DIM)).astype(np.float32),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Weights):
            return NotImplemented
        return all(np.array_equal(a, b) for a, b in zip(self.arrays(), other.arrays(),
                                                        strict=True))


def mutate(weights: Weights, sigma: float, rng: np.random.Generator) -> Weights:
    """A child's weights: every parameter plus N(0, sigma²)."""
    return Weights(*(
        (arr + sigma * rng.standard_normal(arr.shape)).astype(np.float32)
        for arr in weights.arrays()
    ))


def to_onnx(weights: Weights) -> bytes:
    """The genome: deterministic ONNX bytes of the residual graph."""
    return model_bytes(
        "sporemind_agent",
        nodes=[(op, ins, (out,), name, {}) for op, ins, out, name in NODES],
        inputs=[(INPUT[0], FLOAT, INPUT[1])], outputs=[(OUTPUT[0], FLOAT, OUTPUT[1])],
        initializers=list(zip(INITIALIZERS, weights.arrays(), strict=True)))


# -- ONNX bytes without the onnx package ------------------------------------
# The few protobuf messages of onnx.proto (proto2) our two graphs use, each
# field written in field-number order, as protobuf's serializer does.

FLOAT, INT64 = 1, 7  # onnx.proto's TensorProto.DataType
_DTYPES = {np.dtype("<f4"): FLOAT, np.dtype("<i8"): INT64}
_ATTR_INT = 2  # AttributeProto.INT
Node = tuple[str, Sequence[str], Sequence[str], str | None, Mapping[str, int]]
Value = tuple[str, int, Sequence[int | str]]  # name, element type, dims (str: symbolic)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # an int64 goes as its two's complement
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, value: int | str | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _node(node: Node) -> bytes:
    op, ins, outs, name, attrs = node
    return b"".join([*(_field(1, i) for i in ins), *(_field(2, o) for o in outs),
                     _field(3, name) if name is not None else b"", _field(4, op),
                     *(_field(5, _field(1, k) + _field(3, attrs[k]) + _field(20, _ATTR_INT))
                       for k in sorted(attrs))])


def _value(value: Value) -> bytes:
    name, elem, dims = value
    shape = b"".join(_field(1, _field(2 if isinstance(d, str) else 1, d)) for d in dims)
    return _field(1, name) + _field(2, _field(1, _field(1, elem) + _field(2, shape)))


def _tensor(name: str, arr: npt.NDArray[np.generic]) -> bytes:
    arr = np.asarray(arr)
    little = arr.dtype.newbyteorder("<")
    return b"".join([*(_field(1, int(d)) for d in arr.shape), _field(2, _DTYPES[little]),
                     _field(8, name), _field(9, np.ascontiguousarray(arr, little).tobytes())])


def model_bytes(name: str, *, nodes: Sequence[Node], inputs: Sequence[Value],
                outputs: Sequence[Value],
                initializers: Sequence[tuple[str, npt.NDArray[np.generic]]]) -> bytes:
    """A ModelProto (IR_VERSION, opset OPSET, producer "sporemind"), the bytes
    ``onnx.helper.make_model(make_graph(...)).SerializeToString()`` gives."""
    graph = b"".join([*(_field(1, _node(n)) for n in nodes), _field(2, name),
                      *(_field(5, _tensor(k, a)) for k, a in initializers),
                      *(_field(11, _value(v)) for v in inputs),
                      *(_field(12, _value(v)) for v in outputs)])
    return (_field(1, IR_VERSION) + _field(2, "sporemind") + _field(7, graph)
            + _field(8, _field(1, "") + _field(2, OPSET)))


def from_onnx(data: bytes) -> Weights:
    """Weights of a genome; raises GenomeRejected (a VerifyError) unless
    `agents.guard.check` accepts it: the exact architecture, and every weight
    finite and within ±MAX_WEIGHT (a huge one turns every score of the pool
    into NaN). The guard parses the bytes once and hands back the weights."""
    return Weights(*check(data))


def genome_sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- lineage ---------------------------------------------------------------


@dataclass(frozen=True)
class Lineage:
    """Who made an agent, from which parent, with which genome; signed.

    The agent id is the SHA-256 of the signed body: derived, never chosen,
    so nobody can claim another agent's id, and it already names the
    creator, parent, generation, time and genome hash. Travels like every
    record (p2pnode.records): ``msgpack([body, signature])``.
    """

    parent: bytes  # the parent's agent id, or b"" for a root agent
    generation: int  # 0 for a root agent, parent's + 1 for a child
    creator: bytes  # Ed25519 public key of the node that made it
    created_ms: int
    genome_sha256: bytes
    body: bytes
    signature: bytes

    @property
    def agent_id(self) -> bytes:
        return hashlib.sha256(self.body).digest()

    @property
    def wire(self) -> bytes:
        return Envelope(self.body, self.signature).wire

    def check_genome(self, data: bytes) -> None:
        """Raise VerifyError unless `data` is the genome this lineage signed."""
        if genome_sha256(data) != self.genome_sha256:
            raise VerifyError("genome bytes do not match the lineage's genome hash")


def make_lineage(identity: Identity, *, genome: bytes, created_ms: int,
                 parent: Lineage | None = None) -> Lineage:
    """Sign the lineage of a root agent (no parent) or of `parent`'s child."""
    parent_id = parent.agent_id if parent else b""
    generation = parent.generation + 1 if parent else 0
    digest = genome_sha256(genome)
    env = seal(identity, AGENT_DOMAIN, wire.pack(["agent", _VERSION, parent_id, generation,
                                                   identity.public_key, created_ms, digest]))
    return Lineage(parent_id, generation, identity.public_key, created_ms, digest, env.body,
                   env.signature)


def decode_lineage(data: bytes) -> Lineage:
    """Parse and verify a lineage record; raises VerifyError on anything wrong."""
    try:
        env = open_envelope(data, "agent lineage", MAX_LINEAGE_BYTES)
        f = env.open_body("agent lineage body")
    except wire.DecodeError as exc:
        raise VerifyError(f"malformed agent lineage: {exc}") from exc
    if not (isinstance(f, list) and len(f) == 7 and f[0] == "agent" and f[1] == _VERSION):
        raise VerifyError("not a v1 agent lineage")
    _, _, parent, generation, creator, created, digest = f
    if not (isinstance(parent, bytes) and len(parent) in (0, _ID_BYTES)
            and type(generation) is int and 0 <= generation < _MAX_GENERATION
            and (len(parent) == 0) == (generation == 0)
            and isinstance(creator, bytes) and len(creator) == PUBLIC_KEY_BYTES
            and type(created) is int and 0 <= created <= _MAX_UINT
            and isinstance(digest, bytes) and len(digest) == _ID_BYTES):
        raise VerifyError("agent lineage has fields of the wrong type")
    env.verify(AGENT_DOMAIN, creator)
    return Lineage(parent, generation, creator, created, digest, env.body, env.signature)


# -- state -----------------------------------------------------------------


@dataclass
class Agent:
    """A living agent: genome, lineage and what it learned. Time comes in."""

    lineage: Lineage
    weights: Weights
    # Running mean of the queries it served well; zero until it served one.
    specialty: Array = field(default_factory=lambda: np.zeros(DIM, dtype=np.float32))
    interactions: int = 0
    fitness: float = 0.0
    fitness_ms: int = -1  # when `fitness` was last brought up to date (-1: at birth)

    def __post_init__(self) -> None:
        if self.fitness_ms < 0:
            self.fitness_ms = self.lineage.created_ms

    @property
    def agent_id(self) -> bytes:
        return self.lineage.agent_id

    def served_well(self, q: Array, rate: float = 0.1) -> None:
        """Move the specialty toward a query this agent ranked well."""
        self.specialty = ((1.0 - rate) * self.specialty + rate * q).astype(np.float32)

    def decay(self, now_ms: int, half_life_ms: int) -> None:
        """Halve fitness every `half_life_ms`; a clock that steps back changes nothing."""
        elapsed = now_ms - self.fitness_ms
        if elapsed > 0:
            self.fitness *= 0.5 ** (elapsed / half_life_ms)
            self.fitness_ms = now_ms

    def feedback(self, delta: float, now_ms: int, half_life_ms: int) -> None:
        """One rated interaction: decay to now, then add `delta`."""
        self.decay(now_ms, half_life_ms)
        self.fitness += delta
        self.interactions += 1


def new_agent(identity: Identity, weights: Weights, *, created_ms: int,
              parent: Lineage | None = None) -> Agent:
    """An agent born here now: its genome signed into a fresh lineage."""
    lineage = make_lineage(identity, genome=to_onnx(weights), created_ms=created_ms, parent=parent)
    return Agent(lineage, weights)
