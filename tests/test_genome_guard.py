"""A corpus of hostile genomes, each built here with onnx.helper, and the guard.

Every hostile model must be refused by `agents.guard.check` with the right
reason, before any file is opened and before onnxruntime sees it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from agents import guard
from agents.genome import DIM, HIDDEN, INITIALIZERS, NODES, OPSET, Weights, to_onnx
from agents.guard import GenomeRejected
from p2pnode.errors import VerifyError

FLOAT = TensorProto.FLOAT
HONEST_WEIGHTS = Weights.initial(np.random.default_rng(0))
HONEST = to_onnx(HONEST_WEIGHTS)


def _structure(data: bytes, weights: Weights) -> list[int]:
    """Offsets of the genome's bytes that are not raw weights (~300 of 396 K)."""
    outside = np.ones(len(data), dtype=bool)
    for arr in weights.arrays():
        start = data.find(arr.tobytes())
        outside[start:start + arr.nbytes] = False
    return [int(i) for i in np.flatnonzero(outside)]


STRUCTURE = _structure(HONEST, HONEST_WEIGHTS)


def model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], *,
          inputs: list[onnx.ValueInfoProto] | None = None,
          outputs: list[onnx.ValueInfoProto] | None = None,
          opsets: list[onnx.OperatorSetIdProto] | None = None, ir: int = 8) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "hostile",
        [helper.make_tensor_value_info("q", FLOAT, [1, DIM])] if inputs is None else inputs,
        [helper.make_tensor_value_info("r", FLOAT, [1, DIM])] if outputs is None else outputs,
        initializer=inits)
    m = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", OPSET)])
    m.ir_version = ir
    return m


def honest_parts(hidden: int = HIDDEN) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Our architecture's nodes and initializers, with a hidden width of choice."""
    nodes = [helper.make_node(op, list(ins), [out], name=name) for op, ins, out, name in NODES]
    rng = np.random.default_rng(1)
    shapes = {"W1": (DIM, hidden), "b1": (hidden,), "W2": (hidden, DIM), "b2": (DIM,)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in shapes.items()]
    return nodes, inits


def rejected(data: bytes | onnx.ModelProto) -> str:
    raw = data if isinstance(data, bytes) else data.SerializeToString()
    with pytest.raises(GenomeRejected) as info:
        guard.check(raw)
    assert isinstance(info.value, VerifyError)
    return info.value.reason


def external(tensor: onnx.TensorProto, location: str, length: int) -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


# -- (g) the honest genome ------------------------------------------------------


def test_honest_genome_passes_loads_and_runs() -> None:
    guard.check(HONEST)
    session = guard.load(HONEST)
    q = np.random.default_rng(2).standard_normal((1, DIM)).astype(np.float32)
    (r,) = guard.run_with_deadline(session, {"q": q}, deadline_s=5.0)
    assert r.shape == (1, DIM) and np.isfinite(r).all()


# -- (a) external data: the key file is never read -------------------------------


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A node key in the working directory, and a tripwire on every Python-level
    open and on the stages that could read external data."""
    key = tmp_path / "node_identity.key"
    key.write_bytes(b"S" * 32)
    monkeypatch.chdir(tmp_path)
    opened: list[str] = []
    armed = [True]

    def audit(event: str, args: tuple[object, ...]) -> None:
        if armed[0] and event in ("open", "os.open") and "node_identity" in str(args[0]):
            opened.append(str(args[0]))

    sys.addaudithook(audit)  # hooks stay for the process: disarmed below

    def tripwire(*_: object, **__: object) -> None:
        raise AssertionError("external data or shape inference reached")

    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", tripwire)
    monkeypatch.setattr(onnx, "load_external_data_for_model", tripwire)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", tripwire)
    yield key
    armed[0] = False
    assert opened == [], f"the guard opened {opened}"


def external_in_initializer() -> onnx.ModelProto:
    nodes, inits = honest_parts()
    external(inits[0], "node_identity.key", 32)
    return model(nodes, inits)


def external_in_constant() -> onnx.ModelProto:
    nodes, inits = honest_parts()
    value = external(numpy_helper.from_array(np.zeros(8, np.uint8), "k"), "node_identity.key", 8)
    nodes.insert(0, helper.make_node("Constant", [], ["k"], value=value))
    return model(nodes, inits)


def external_in_subgraph() -> onnx.ModelProto:
    leaked = external(numpy_helper.from_array(np.zeros(8, np.uint8), "k"),
                      "../../node_identity.key", 8)
    branch = helper.make_graph([helper.make_node("Identity", ["k"], ["out"])], "b", [],
                               [helper.make_tensor_value_info("out", TensorProto.UINT8, [8])],
                               initializer=[leaked])
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["r"], then_branch=branch, else_branch=branch)
    return model([node], [cond], inputs=[],
                 outputs=[helper.make_tensor_value_info("r", TensorProto.UINT8, [8])])


def external_in_training_graph() -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.ParseFromString(HONEST)
    info = m.training_info.add()
    info.initialization.initializer.append(
        external(numpy_helper.from_array(np.zeros(8, np.uint8), "k"),
                 "/etc/sporemind/node_identity.key", 8))
    return m


@pytest.mark.parametrize("build", [external_in_initializer, external_in_constant,
                                   external_in_subgraph, external_in_training_graph])
def test_external_data_is_refused_without_reading_it(key_file: Path, build: object) -> None:
    hostile = build()  # type: ignore[operator]
    assert rejected(hostile) == "external_data"
    with pytest.raises(GenomeRejected, match="external_data"):
        guard.load(hostile.SerializeToString())


def test_onnxruntime_alone_would_read_the_key_but_our_session_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the check exists, and the defence in depth behind it."""
    import onnxruntime as ort

    (tmp_path / "node_identity.key").write_bytes(b"SECRET" * 4)
    monkeypatch.chdir(tmp_path)
    leak = external(numpy_helper.from_array(np.zeros(24, np.uint8), "k"), "node_identity.key", 24)
    m = model([helper.make_node("Identity", ["k"], ["out"])], [leak], inputs=[],
              outputs=[helper.make_tensor_value_info("out", TensorProto.UINT8, [24])])
    data = m.SerializeToString()
    plain = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert bytes(plain.run(None, {})[0]) == b"SECRET" * 4
    with pytest.raises(GenomeRejected) as info:
        guard._session(data)  # the loader behind guard.load, without the check
    assert info.value.reason == "load"


# -- (b) asking for 16 GiB -------------------------------------------------------


def test_constant_of_shape_16_gib_is_refused() -> None:
    shape = numpy_helper.from_array(np.array([1 << 32], dtype=np.int64), "shape")
    node = helper.make_node("ConstantOfShape", ["shape"], ["r"])
    out = helper.make_tensor_value_info("r", FLOAT, [1 << 32])
    assert rejected(model([node], [shape], inputs=[], outputs=[out])) == "operator"


def test_initializer_claiming_4g_elements_is_refused() -> None:
    nodes, inits = honest_parts()
    huge = onnx.TensorProto(name="W1", data_type=FLOAT, dims=[1 << 16, 1 << 16])
    assert rejected(model(nodes, [huge, *inits[1:]])) == "too_large"


def test_allowlisted_broadcast_to_16_gib_is_refused() -> None:
    """Two 256 KB initializers whose Add broadcasts to 2^32 floats."""
    col = numpy_helper.from_array(np.zeros((1 << 16, 1), np.float32), "col")
    row = numpy_helper.from_array(np.zeros((1, 1 << 16), np.float32), "row")
    node = helper.make_node("Add", ["col", "row"], ["r"])
    out = helper.make_tensor_value_info("r", FLOAT, None)
    hostile = model([node], [col, row], inputs=[], outputs=[out])
    assert len(hostile.SerializeToString()) < guard.MAX_GENOME_BYTES
    assert rejected(hostile) == "too_large"


def test_symbolic_input_size_is_refused() -> None:
    nodes, inits = honest_parts()
    q = helper.make_tensor_value_info("q", FLOAT, ["n", DIM])
    assert rejected(model(nodes, inits, inputs=[q])) == "too_large"


# -- (c) an endless Loop -----------------------------------------------------------


def test_endless_loop_is_refused() -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])])
    trips = numpy_helper.from_array(np.array(1 << 62, dtype=np.int64), "trips")
    cond = numpy_helper.from_array(np.array(True), "cond")
    loop = helper.make_node("Loop", ["trips", "cond"], [], body=body)
    hostile = model([loop], [trips, cond], inputs=[], outputs=[])
    assert rejected(hostile) == "subgraph"


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    key, size, out = (number << 3) | 2, len(payload), bytearray()
    for value in (key, size):
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


@pytest.mark.parametrize(("depth", "reason"), [(20, "subgraph"), (500, "corrupt")])
def test_deeply_nested_graphs_are_refused(depth: int, reason: str) -> None:
    """Graphs nested in If attributes, written at the wire level (onnx.helper's
    own protobuf refuses to build the deep one)."""
    graph = b""
    for _ in range(depth):  # graph.node[0].attribute[0].g = graph
        attribute = _field(1, b"then_branch") + _field(6, graph) + b"\xa0\x01\x05"  # type GRAPH
        graph = _field(1, _field(4, b"If") + _field(5, attribute))
    opset = b"\x10" + bytes([OPSET])  # opset_import.version
    hostile = b"\x08\x08" + _field(8, opset) + _field(7, graph)  # ir_version 8
    assert rejected(hostile) == reason


# -- (d) unknown operators, custom domains, other opsets ----------------------------


def test_unknown_operator_is_refused() -> None:
    nodes, inits = honest_parts()
    nodes[2] = helper.make_node("Gelu", ["h_lin"], ["h"], name="tanh")
    assert rejected(model(nodes, inits)) == "operator"


def test_custom_domain_operator_is_refused() -> None:
    nodes, inits = honest_parts()
    nodes[2] = helper.make_node("Tanh", ["h_lin"], ["h"], name="tanh", domain="com.evil")
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.evil", 1)]
    assert rejected(model(nodes, inits, opsets=opsets)) == "custom_domain"


def test_model_local_function_is_refused() -> None:
    nodes, inits = honest_parts()
    m = model(nodes, inits)
    m.functions.append(helper.make_function(
        "com.evil", "Tanh", ["x"], ["y"], [helper.make_node("Tanh", ["x"], ["y"])],
        [helper.make_opsetid("", OPSET)]))
    assert rejected(m) == "custom_domain"


@pytest.mark.parametrize(("opset", "ir"), [(OPSET + 1, 8), (OPSET - 1, 8), (OPSET, 10)])
def test_other_opset_or_ir_version_is_refused(opset: int, ir: int) -> None:
    nodes, inits = honest_parts()
    assert rejected(model(nodes, inits, opsets=[helper.make_opsetid("", opset)], ir=ir)) == "opset"


# -- (e) oversized, (f) corrupt ---------------------------------------------------------


def test_oversized_genome_is_refused() -> None:
    nodes, inits = honest_parts()
    m = model(nodes, inits)
    m.doc_string = "x" * guard.MAX_GENOME_BYTES
    assert rejected(m) == "too_large"


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_corrupt(seed: int) -> None:
    noise = np.random.default_rng(seed).bytes(4096)
    assert rejected(noise) == "corrupt"


@pytest.mark.parametrize("keep", [0, 10, 1000, len(HONEST) // 2, len(HONEST) - 1])
def test_truncated_genome_is_corrupt(keep: int) -> None:
    assert rejected(HONEST[:keep]) == "corrupt"


def test_data_that_contradicts_dims_is_corrupt() -> None:
    nodes, inits = honest_parts()
    inits[0].raw_data = inits[0].raw_data[:-4]
    assert rejected(model(nodes, inits)) == "corrupt"


# -- (h) allowlisted, but not our graph -------------------------------------------------


def test_wrong_hidden_width_is_refused() -> None:
    nodes, inits = honest_parts(hidden=64)
    assert rejected(model(nodes, inits)) == "architecture"


def renamed_node() -> onnx.ModelProto:
    nodes, inits = honest_parts()
    nodes[0].name = "other"
    return model(nodes, inits)


def extra_output() -> onnx.ModelProto:
    nodes, inits = honest_parts()
    outs = [helper.make_tensor_value_info(n, FLOAT, [1, DIM]) for n in ("r", "d")]
    return model(nodes, inits, outputs=outs)


def skip_removed() -> onnx.ModelProto:
    nodes, inits = honest_parts()
    nodes[4].output[0] = "r"
    return model(nodes[:5], inits)


def swapped_weights() -> onnx.ModelProto:
    nodes, inits = honest_parts()
    inits[0].name, inits[2].name = "W2", "W1"
    return model(nodes, inits)


@pytest.mark.parametrize("build", [renamed_node, extra_output, skip_removed, swapped_weights])
def test_near_misses_of_the_architecture_are_refused(build: object) -> None:
    assert rejected(build()) in ("architecture",)  # type: ignore[operator]


def test_the_guard_accepts_exactly_the_initializers_the_genome_declares() -> None:
    assert set(INITIALIZERS) == {"W1", "b1", "W2", "b2"}
    assert {op for op, *_ in NODES} == guard.ALLOWED_OPS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(STRUCTURE), st.integers(0, 255)),
                min_size=1, max_size=4))
def test_damaged_genomes_pass_or_are_rejected_cleanly(flips: list[tuple[int, int]]) -> None:
    """Damage to the protobuf structure (names, dims, tags, lengths) yields a valid
    genome or a GenomeRejected, nothing else (20,000 such runs found no escape)."""
    data = bytearray(HONEST)
    for where, value in flips:
        data[where] = value
    try:
        guard.check(bytes(data))
    except GenomeRejected:
        return


# -- time limits ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_session() -> object:
    """A legitimate but slow model (200 chained 768² MatMuls, seconds of work),
    loaded without the guard: it exists to be stopped."""
    import onnxruntime as ort

    eye = numpy_helper.from_array(np.eye(768, dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", [f"x{i}", "W"], [f"x{i + 1}"]) for i in range(200)]
    m = model(nodes, [eye], inputs=[helper.make_tensor_value_info("x0", FLOAT, [768, 768])],
              outputs=[helper.make_tensor_value_info("x200", FLOAT, [768, 768])])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def test_run_with_deadline_terminates_a_slow_run(slow_session: object) -> None:
    x = np.ones((768, 768), dtype=np.float32)
    start = time.monotonic()
    with pytest.raises(GenomeRejected) as info:
        guard.run_with_deadline(slow_session, {"x0": x}, deadline_s=0.1)
    elapsed = time.monotonic() - start
    assert info.value.reason == "timeout"
    assert elapsed < 1.5, f"terminated after {elapsed:.2f} s"


def test_run_with_deadline_returns_a_fast_run_and_the_session_survives(
        slow_session: object) -> None:
    session = guard.load(HONEST)
    q = np.ones((1, DIM), dtype=np.float32)
    first = guard.run_with_deadline(session, {"q": q}, deadline_s=5.0)[0]
    with pytest.raises(GenomeRejected, match="timeout"):
        guard.run_with_deadline(slow_session, {"x0": np.ones((768, 768), np.float32)}, 0.05)
    again = guard.run_with_deadline(session, {"q": q}, deadline_s=5.0)[0]
    np.testing.assert_array_equal(first, again)


def test_run_errors_are_mapped_not_leaked() -> None:
    session = guard.load(HONEST)
    with pytest.raises(GenomeRejected) as info:
        guard.run_with_deadline(session, {"q": np.ones((2, 3), np.float32)}, deadline_s=5.0)
    assert info.value.reason == "run"
