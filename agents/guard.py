"""Untrusted input to the agents: a peer's genomes and its agent requests.

Genomes: check a peer's ONNX bytes before onnxruntime sees them. `check`
parses them once and, if they pass, returns their weights: agents.genome's
`from_onnx` is that call (the guard reads the architecture from
agents.architecture and imports nothing of agents.genome).

A genome from a peer may try to read our files through external data
(onnxruntime resolves it against the working directory), ask for 16 GiB at
run time, loop forever, or call operators we never emit (NOTES.md). `check`
works on the parsed protobuf alone — no file is opened, no external data is
resolved, nothing runs — and accepts exactly the graph `agents.genome`
builds. Each refusal is a `GenomeRejected` whose `.reason` is a short
counter name:

    too_large       over the byte cap, or a tensor/total element count over its cap
    corrupt         not a parseable model, or tensors whose data contradicts their dims
    external_data   any tensor stored outside the model, in any graph
    subgraph        graph-valued attributes (Loop, If, Scan …), training graphs
    custom_domain   a domain other than ONNX's own, or model-local functions
    opset           not exactly opset 17 / IR version 8
    operator        an operator outside {MatMul, Add, Tanh}
    architecture    allowlisted, but not our graph (names, shapes, wiring)
    weights         a parameter that is not finite or over ±MAX_WEIGHT
    load, run       onnxruntime refused it anyway (defence in depth)
    timeout         a run exceeded its deadline and was terminated

`load` adds defence in depth (a session from bytes, external data pointed at
an empty folder, one thread) and `run_with_deadline` bounds a run's time.
The ``onnx`` package (protobuf parsing, shape inference: ~8 MB of RSS) is
imported by the first `check`, so a spore that never takes a peer's genome
never loads it.

Requests (p2pnode.agentnet's routes score, feedback, adopt): one bounded
decoder per wire shape (crdt.wire: bounded msgpack, exact types and
sizes, ids of 32 bytes, no number used as a size), and `Scorings`, the book
of what this spore scored for which peer, without which a peer's rating
counts for nothing. Each refusal is a `Rejected` with a `.reason`.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.architecture import (
    DIM,
    INITIALIZERS,
    INPUT,
    IR_VERSION,
    MAX_LINEAGE_BYTES,
    MAX_WEIGHT,
    NODES,
    OPSET,
    OUTPUT,
)
from crdt import wire
from p2pnode.errors import VerifyError

if TYPE_CHECKING:
    from onnx import GraphProto, NodeProto, TensorProto

__all__ = [
    "ALLOWED_OPS",
    "MAX_CANDIDATES",
    "MAX_ELEMENTS",
    "MAX_GENOME_BYTES",
    "MAX_REMOTE_AGENTS",
    "MAX_TENSOR_ELEMENTS",
    "RID_BYTES",
    "GenomeRejected",
    "Rejected",
    "Scoring",
    "Scorings",
    "check",
    "decode_adoption",
    "decode_feedback",
    "decode_score_reply",
    "decode_score_request",
    "load",
    "row_hashes",
    "run_with_deadline",
    "vectors",
]

MAX_GENOME_BYTES = 1 << 20  # an honest genome is ~396 KB
MAX_TENSOR_ELEMENTS = 1 << 20
MAX_ELEMENTS = 2 << 20  # all initializers and inferred values together
ALLOWED_OPS = frozenset({"MatMul", "Add", "Tanh"})
_ONNX_DOMAINS = ("", "ai.onnx")
# onnx.proto's enum values, written out: the onnx package (~8 MB of a spore's
# RSS) is imported only when a genome is checked, never by a spore that only
# scores and divides its own agents (tests/test_idle_footprint.py compares
# these with onnx's own).
_FLOAT, _UINT8, _INT8, _INT32, _INT64, _BOOL, _FLOAT16, _DOUBLE = 1, 2, 3, 6, 7, 9, 10, 11
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_GRAPH_ATTRS = (5, 10)  # AttributeProto.GRAPH, AttributeProto.GRAPHS
_ITEM_BYTES: dict[int, int] = {_FLOAT: 4, _DOUBLE: 8, _FLOAT16: 2, _INT64: 8, _INT32: 4,
                               _INT8: 1, _UINT8: 1, _BOOL: 1}


class Rejected(VerifyError):
    """Peer input the agents will not take; `.reason` names why (a counter key)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class GenomeRejected(Rejected):
    """A peer's genome failed a check; `.reason` names which (a counter key)."""

    def __init__(self, reason: str, detail: object = "") -> None:
        # Peer-chosen names may be long or, in proto2 strings, not even UTF-8.
        shown = detail if isinstance(detail, str) else repr(detail)
        super().__init__(reason,
                         f"genome rejected ({reason}){': ' + shown[:120] if shown else ''}")


def check(data: bytes) -> tuple[np.ndarray, ...]:
    """The weights of `data` (float32 arrays, own copies, in INITIALIZERS'
    order); GenomeRejected unless it is exactly an agent genome with bounded
    weights. Parses the bytes once; no I/O."""
    if len(data) > MAX_GENOME_BYTES:
        raise GenomeRejected("too_large", f"{len(data)} bytes > {MAX_GENOME_BYTES}")
    model = _parse(data)
    _check_containers(model)
    _check_graph_safety(model.graph)
    _check_opset(model)
    _check_elements(model.graph)
    _check_inferred_shapes(model)
    _check_architecture(model.graph)
    return _weights(model.graph)


def _parse(data: bytes) -> Any:
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise GenomeRejected("corrupt", str(exc)) from exc
    if not model.HasField("graph") or model.ir_version <= 0:
        raise GenomeRejected("corrupt", "no graph or IR version")
    return model


def _check_containers(model: Any) -> None:
    """Everything that could hold a graph or tensor besides the main graph."""
    for info in model.training_info:
        for graph in (info.initialization, info.algorithm):
            _check_graph_safety(graph)
    if len(model.training_info):
        raise GenomeRejected("subgraph", "training graphs")
    if len(model.functions):
        raise GenomeRejected("custom_domain", "model-local functions")


def _check_graph_safety(graph: GraphProto) -> None:
    """External data first (the dangerous one), then nested graphs, then domains."""
    for tensor in _tensors(graph):
        if tensor.data_location == _EXTERNAL or len(tensor.external_data):
            raise GenomeRejected("external_data", f"tensor {tensor.name!r}")
    for node in _nodes(graph):
        if any(attr.type in _GRAPH_ATTRS or attr.HasField("g") or len(attr.graphs)
               for attr in node.attribute):
            raise GenomeRejected("subgraph", f"{node.op_type} carries a graph")
        if node.domain not in _ONNX_DOMAINS:
            raise GenomeRejected("custom_domain", node.domain)


def _nodes(graph: GraphProto) -> Iterator[NodeProto]:
    """Every node, in nested graphs too (a refusal stops the walk before depth matters)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _nodes(sub)


def _tensors(graph: GraphProto) -> Iterator[TensorProto]:
    """Every tensor a graph holds: initializers, sparse ones, attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + \
                    list(attr.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def _check_opset(model: Any) -> None:
    imports = [(op.domain, op.version) for op in model.opset_import]
    if any(domain not in _ONNX_DOMAINS for domain, _ in imports):
        raise GenomeRejected("custom_domain", "opset import of another domain")
    if imports not in ([("", OPSET)], [("ai.onnx", OPSET)]) or model.ir_version != IR_VERSION:
        raise GenomeRejected("opset", f"{imports[:3]} ir {model.ir_version}")
    for node in model.graph.node:
        if node.op_type not in ALLOWED_OPS:
            raise GenomeRejected("operator", node.op_type)


def _check_elements(graph: GraphProto) -> None:
    """Initializer sizes from their dims (capped), and data that matches the dims."""
    if len(graph.sparse_initializer):
        raise GenomeRejected("architecture", "sparse initializers")
    total = 0
    for tensor in graph.initializer:
        if any(d < 0 for d in tensor.dims):
            raise GenomeRejected("corrupt", f"negative dim in {tensor.name!r}")
        count = int(np.prod(tensor.dims, dtype=object))
        total += count
        if count > MAX_TENSOR_ELEMENTS or total > MAX_ELEMENTS:
            raise GenomeRejected("too_large", f"{tensor.name!r} has {count} elements")
        if _stored_elements(tensor) != count:
            raise GenomeRejected("corrupt", f"{tensor.name!r} data does not fit its dims")


def _stored_elements(tensor: TensorProto) -> int:
    if tensor.HasField("raw_data"):
        size = _ITEM_BYTES.get(tensor.data_type, 0)
        return len(tensor.raw_data) // size if size and len(tensor.raw_data) % size == 0 else -1
    return max(len(tensor.float_data), len(tensor.int32_data), len(tensor.int64_data),
               len(tensor.double_data))


def _check_inferred_shapes(model: Any) -> None:
    """Every value's inferred shape must be fully known and within the caps."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                     data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError,
            ValueError) as exc:
        raise GenomeRejected("architecture", f"shape inference: {exc}") from exc
    graph = inferred.graph
    total = 0
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape") or \
                any(not d.HasField("dim_value") or d.dim_value < 0 for d in dims):
            raise GenomeRejected("too_large", f"unbounded shape for {value.name!r}")
        count = int(np.prod([d.dim_value for d in dims], dtype=object))
        total += count
        if count > MAX_TENSOR_ELEMENTS or total > MAX_ELEMENTS:
            raise GenomeRejected("too_large", f"{value.name!r} infers {count} elements")


def _value(value: Any) -> tuple[str, int, tuple[int, ...]]:
    tensor_type = value.type.tensor_type
    return (value.name, tensor_type.elem_type,
            tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim))


_EXPECTED_IO = ([(INPUT[0], _FLOAT, INPUT[1])], [(OUTPUT[0], _FLOAT, OUTPUT[1])])
_EXPECTED_INITS = {name: (_FLOAT, shape) for name, shape in INITIALIZERS.items()}


def _check_architecture(graph: GraphProto) -> None:
    """Exactly `agents.genome`'s graph: inputs, outputs, initializers, nodes in order."""
    io = ([_value(v) for v in graph.input], [_value(v) for v in graph.output])
    inits = {t.name: (t.data_type, tuple(t.dims)) for t in graph.initializer}
    nodes = [(n.op_type, tuple(n.input), tuple(n.output), n.name) for n in graph.node]
    expected = [(op, ins, (out,), name) for op, ins, out, name in NODES]
    if io != _EXPECTED_IO:
        raise GenomeRejected("architecture", "inputs or outputs differ")
    if inits != _EXPECTED_INITS or len(graph.initializer) != len(INITIALIZERS):
        raise GenomeRejected("architecture", "initializers differ")
    if nodes != expected or any(len(n.attribute) for n in graph.node) or len(graph.value_info):
        raise GenomeRejected("architecture", "nodes differ")


def _weights(graph: GraphProto) -> tuple[np.ndarray, ...]:
    """The initializers (whose names, types and dims the architecture check
    proved) as arrays, each finite and within ±MAX_WEIGHT."""
    from onnx import numpy_helper

    found = {t.name: t for t in graph.initializer}
    arrays = []
    for name, shape in INITIALIZERS.items():
        arr = numpy_helper.to_array(found[name])
        if arr.dtype != np.float32 or arr.shape != shape:
            raise GenomeRejected("architecture", f"{name} is not float32 {shape}")
        if not np.isfinite(arr).all() or float(np.abs(arr).max()) > MAX_WEIGHT:
            raise GenomeRejected("weights", f"{name} is not finite or over ±{MAX_WEIGHT:g}")
        arrays.append(np.array(arr, dtype=np.float32))  # own, writable copy
    return tuple(arrays)


# -- onnxruntime, after the check ------------------------------------------


def load(data: bytes) -> Any:
    """An onnxruntime session for a checked genome (check runs here first)."""
    check(data)
    return _session(data)


def _session(data: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="sporemind-genome-") as empty:
        # From bytes, onnxruntime resolves external data against the working
        # directory; point it at an empty folder in case a check ever misses one.
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", empty)
        try:
            return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's errors have no common base
            raise GenomeRejected("load", str(exc)) from exc


def run_with_deadline(session: Any, feeds: Mapping[str, np.ndarray], deadline_s: float
                      ) -> list[np.ndarray]:
    """Run `session`; past `deadline_s` a timer sets RunOptions.terminate.

    Blocking: call it from a worker thread, never the event loop. onnxruntime
    checks the flag between nodes, so one node's work must itself be bounded
    (the guard's element caps see to that for genomes).
    """
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 3
    fired = threading.Event()

    def terminate() -> None:
        fired.set()
        options.terminate = True

    timer = threading.Timer(deadline_s, terminate)
    timer.daemon = True
    timer.start()
    try:
        return list(session.run(None, dict(feeds), options))
    except Exception as exc:  # onnxruntime's errors have no common base
        if fired.is_set():
            raise GenomeRejected("timeout", f"over {deadline_s:g} s") from exc
        raise GenomeRejected("run", str(exc)) from exc
    finally:
        timer.cancel()


# -- peers' agent requests ---------------------------------------------------

MAX_CANDIDATES = 64  # rows one score request may carry
MAX_REMOTE_AGENTS = 256  # rows one score reply may carry
RID_BYTES = 16  # a score request's id, named again by its rating
VEC_BYTES = 2 * DIM  # one float16 embedding
SCORINGS_KEPT, SCORINGS_PER_PEER, SCORING_TTL_S = 2048, 128, 1800.0


def vectors(data: bytes, rows: int | None = None) -> np.ndarray:
    """Finite float16 rows of DIM (exactly `rows` of them if given), as float32."""
    if len(data) % VEC_BYTES:
        raise Rejected("malformed", "embeddings must be float16 rows of 384")
    out = np.frombuffer(data, dtype=np.float16).astype(np.float32).reshape(-1, DIM)
    if rows is not None and len(out) != rows:
        raise Rejected("malformed", "wrong number of embedding rows")
    if not np.all(np.isfinite(out)):
        raise Rejected("not_finite", "embeddings must be finite")
    return out


def row_hashes(data: bytes) -> tuple[bytes, ...]:
    """An 8-byte hash of each float16 row: what a rating's memory is checked against."""
    return tuple(hashlib.blake2b(data[i:i + VEC_BYTES], digest_size=8).digest()
                 for i in range(0, len(data), VEC_BYTES))


# -- agent requests: one bounded decoder per wire shape ----------------------


def _fields(body: bytes, what: str, max_bytes: int, n: int) -> list[object]:
    return wire.as_list(wire.unpack(body, max_bytes, what), what, n, n)


def decode_score_request(body: bytes) -> tuple[bytes, np.ndarray, np.ndarray, bytes]:
    """[request id, q, candidates] -> (id, q [384], candidates [C, 384], their bytes)."""
    try:
        f = _fields(body, "score request", 1024 + (MAX_CANDIDATES + 1) * VEC_BYTES, 3)
        rid = wire.as_bytes(f[0], "request id", RID_BYTES, RID_BYTES)
        qb = wire.as_bytes(f[1], "query", VEC_BYTES, VEC_BYTES)
        vb = wire.as_bytes(f[2], "candidates", MAX_CANDIDATES * VEC_BYTES, VEC_BYTES)
    except wire.DecodeError as exc:
        raise Rejected("malformed", str(exc)) from exc
    return rid, vectors(qb, 1)[0], vectors(vb), vb


def decode_score_reply(reply: bytes, candidates: int
                       ) -> tuple[tuple[bytes, ...], np.ndarray, np.ndarray]:
    """[agent ids, fitness float32, scores float16 [A, C]], all finite."""
    try:
        f = _fields(reply, "score reply", 64 * 1024, 3)
        ids = [wire.as_bytes(i, "agent id", 32, 32)
               for i in wire.as_list(f[0], "agent ids", MAX_REMOTE_AGENTS)]
        fit = wire.as_bytes(f[1], "fitness", 4 * len(ids), 4 * len(ids))
        raw = wire.as_bytes(f[2], "scores", 2 * len(ids) * candidates, 2 * len(ids) * candidates)
    except wire.DecodeError as exc:
        raise Rejected("malformed", str(exc)) from exc
    fitness = np.frombuffer(fit, dtype=np.float32).copy()
    scores = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
    if not (np.all(np.isfinite(fitness)) and np.all(np.isfinite(scores))):
        raise Rejected("not_finite", "a score reply that is not finite")
    return tuple(ids), fitness, scores.reshape(len(ids), candidates)


def decode_feedback(body: bytes) -> tuple[bytes, int, bool, bytes]:
    """[request id, chosen row, up, the chosen memory's float16 embedding]."""
    try:
        f = _fields(body, "feedback", 1024 + VEC_BYTES, 4)
        rid = wire.as_bytes(f[0], "request id", RID_BYTES, RID_BYTES)
        chosen = wire.as_int(f[1], "chosen", 0, MAX_CANDIDATES - 1)
        memory = wire.as_bytes(f[3], "memory", VEC_BYTES, VEC_BYTES)
    except wire.DecodeError as exc:
        raise Rejected("malformed", str(exc)) from exc
    if not isinstance(f[2], bool):
        raise Rejected("malformed", "feedback: up must be true or false")
    return rid, chosen, f[2], memory


def decode_adoption(body: bytes) -> tuple[bytes, bytes, bytes]:
    """[lineage, genome, specialty] (each checked in full by check_guest)."""
    try:
        f = _fields(body, "adoption", MAX_GENOME_BYTES + 4096, 3)
        return (wire.as_bytes(f[0], "lineage", MAX_LINEAGE_BYTES),
                wire.as_bytes(f[1], "genome", MAX_GENOME_BYTES + 4096),
                wire.as_bytes(f[2], "specialty", VEC_BYTES))
    except wire.DecodeError as exc:
        raise Rejected("malformed", str(exc)) from exc


# -- what this spore scored for whom (the clock comes in) -----------------


@dataclass
class Scoring:
    at: float  # the clock's seconds when we scored
    q: np.ndarray
    ids: tuple[bytes, ...]  # our agents that scored
    scores: np.ndarray  # [A, C] float16, as we answered
    cands: tuple[bytes, ...]  # a hash of each candidate's float16 row
    rated: bool = False


class Scorings:
    """The scorings this spore did for each peer: a peer's rating counts only
    for one of these, once. Bounded per peer and in all; they expire."""

    def __init__(self, per_peer: int = SCORINGS_PER_PEER, total: int = SCORINGS_KEPT,
                 ttl_s: float = SCORING_TTL_S) -> None:
        self.per_peer, self.total, self.ttl_s = per_peer, total, ttl_s
        self._order: OrderedDict[tuple[bytes, bytes], float] = OrderedDict()
        self._by_peer: dict[bytes, OrderedDict[bytes, Scoring]] = {}

    def __len__(self) -> int:
        return len(self._order)

    def check_new(self, peer: bytes, rid: bytes) -> None:
        if rid in self._by_peer.get(peer, {}):
            raise Rejected("repeated_request", "this request id was already scored")

    def add(self, peer: bytes, rid: bytes, scoring: Scoring) -> None:
        self._expire(scoring.at)
        self.check_new(peer, rid)
        mine = self._by_peer.setdefault(peer, OrderedDict())
        mine[rid] = scoring
        self._order[(peer, rid)] = scoring.at
        if len(mine) > self.per_peer:
            self._drop(peer, next(iter(mine)))
        if len(self._order) > self.total:
            self._drop(*next(iter(self._order)))

    def rate(self, peer: bytes, rid: bytes, chosen: int, memory: bytes, now: float
             ) -> Scoring:
        """The scoring a rating from `peer` names, marked rated; Rejected unless
        it exists, is not rated yet, and `memory` is the candidate it scored."""
        self._expire(now)
        mine = self._by_peer.get(peer)
        scoring = mine.get(rid) if mine is not None else None
        if scoring is None:
            raise Rejected("unscored", "no scoring of ours for this peer has this id")
        if scoring.rated:
            raise Rejected("already_rated", "this scoring was already rated")
        if chosen >= len(scoring.cands) or row_hashes(memory)[0] != scoring.cands[chosen]:
            raise Rejected("wrong_candidate", "the rated memory is not the one scored")
        scoring.rated = True
        return scoring

    def _expire(self, now: float) -> None:
        while self._order:
            key, at = next(iter(self._order.items()))
            if now - at <= self.ttl_s:
                break
            self._drop(*key)

    def _drop(self, peer: bytes, rid: bytes) -> None:
        self._order.pop((peer, rid), None)
        mine = self._by_peer.get(peer)
        if mine is not None:
            mine.pop(rid, None)
            if not mine:
                del self._by_peer[peer]
