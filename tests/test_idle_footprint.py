"""An idle spore does not carry what it does not use (issue 12: idle RSS).

The ``onnx`` package (~8 MB of a spore's RSS, measured) is needed only to
check a peer's genome. The genomes and the pool's graph are written by
`agents.genome.model_bytes`, which must give ``onnx.helper``'s bytes, byte for
byte: an agent's id signs the SHA-256 of its genome, and a stored agent is
revived by writing its genome again and comparing the hash. Then a real
daemon that starts, learns, scores and rates, and starts again, must never
have loaded onnx (nor the optional extras: generation, MCP, LAN discovery).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from agents import guard, pool
from agents.genome import (
    _ATTR_INT,
    DIM,
    FLOAT,
    HIDDEN,
    INITIALIZERS,
    INPUT,
    INT64,
    IR_VERSION,
    NODES,
    OPSET,
    OUTPUT,
    Weights,
    model_bytes,
    mutate,
    to_onnx,
)
from tests.conftest import make_daemon

ROOT = Path(__file__).resolve().parents[1]
# Not imported by a daemon that has not been asked for them: onnx (and what
# it brings: protobuf, ml_dtypes), the generator, MCP, LAN discovery, tests.
NOT_AT_START = ("onnx", "google.protobuf", "ml_dtypes", "xllamacpp", "mcp", "pydantic",
                "zeroconf", "httpx", "hypothesis", "prometheus_client")
# Their compiled modules, as a process's memory map names them.
NOT_MAPPED = ("onnx_cpp2py_export", "ml_dtypes", "google/_upb", "xllamacpp", "pydantic_core",
              "zeroconf")


def helper_genome(weights: Weights) -> bytes:
    """The genome as onnx.helper writes it (how agents.genome built it before)."""
    nodes = [helper.make_node(op, list(ins), [out], name=name) for op, ins, out, name in NODES]
    inits = [numpy_helper.from_array(arr, name)
             for name, arr in zip(INITIALIZERS, weights.arrays(), strict=True)]
    graph = helper.make_graph(
        nodes, "sporemind_agent",
        [helper.make_tensor_value_info(INPUT[0], TensorProto.FLOAT, list(INPUT[1]))],
        [helper.make_tensor_value_info(OUTPUT[0], TensorProto.FLOAT, list(OUTPUT[1]))],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sporemind")
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def helper_pool() -> bytes:
    """The pool's graph as onnx.helper writes it (how agents.pool built it before)."""
    node = helper.make_node
    nodes = [node("MatMul", ["q", "W1"], ["h_pre"]), node("Add", ["h_pre", "b1"], ["h_lin"]),
             node("Tanh", ["h_lin"], ["h"]), node("MatMul", ["h", "W2"], ["d_pre"]),
             node("Add", ["d_pre", "b2"], ["d"]), node("Add", ["q", "d"], ["r3"]),
             node("Reshape", ["r3", "r_shape"], ["r"]),
             node("LpNormalization", ["r"], ["r_unit"], axis=-1, p=2),
             node("Gemm", ["r_unit", "cand"], ["scores"], transB=1)]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "sporemind_pool",
        [value("q", TensorProto.FLOAT, [1, DIM]), value("cand", TensorProto.FLOAT, ["C", DIM]),
         value("W1", TensorProto.FLOAT, ["A", DIM, HIDDEN]),
         value("b1", TensorProto.FLOAT, ["A", 1, HIDDEN]),
         value("W2", TensorProto.FLOAT, ["A", HIDDEN, DIM]),
         value("b2", TensorProto.FLOAT, ["A", 1, DIM])],
        [value("scores", TensorProto.FLOAT, ["A", "C"])],
        initializer=[numpy_helper.from_array(np.array([-1, DIM], dtype=np.int64), "r_shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sporemind")
    model.ir_version = IR_VERSION
    return model.SerializeToString()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_genome_is_the_bytes_onnx_helper_writes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    weights = mutate(Weights.initial(rng), 0.05, rng)
    assert to_onnx(weights) == helper_genome(weights)


def test_extreme_weights_are_written_as_onnx_helper_writes_them() -> None:
    """Signed zeros, subnormals, the largest floats, NaN bits: raw bytes, as they are."""
    values = np.array([-0.0, 0.0, 1e-45, -3.4e38, 3.4e38, np.nan, 1.0], dtype=np.float32)
    arrays = [np.resize(values, shape).astype(np.float32) for shape in INITIALIZERS.values()]
    weights = Weights(*arrays)
    assert to_onnx(weights) == helper_genome(weights)


def test_the_pool_graph_is_the_bytes_onnx_helper_writes() -> None:
    assert pool._pool_model() == helper_pool()


def test_model_bytes_parse_back_as_written() -> None:
    """Negative attributes, symbolic dims and an int64 tensor read back through onnx."""
    data = model_bytes(
        "g", nodes=[("LpNormalization", ["x"], ["y"], "n", {"p": 2, "axis": -1})],
        inputs=[("x", FLOAT, ["N", 300])], outputs=[("y", FLOAT, ["N", 300])],
        initializers=[("k", np.array([-5, 1 << 40], dtype=np.int64))])
    m = onnx.ModelProto.FromString(data)
    attrs = {a.name: (a.i, a.type) for a in m.graph.node[0].attribute}
    assert attrs == {"axis": (-1, AttributeProto.INT), "p": (2, AttributeProto.INT)}
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert (dims[0].dim_param, dims[1].dim_value) == ("N", 300)
    assert numpy_helper.to_array(m.graph.initializer[0]).tolist() == [-5, 1 << 40]
    assert (m.ir_version, m.opset_import[0].version, m.producer_name) == (
        IR_VERSION, OPSET, "sporemind")


def test_enum_values_written_out_are_onnx_own() -> None:
    assert (FLOAT, INT64, _ATTR_INT) == (TensorProto.FLOAT, TensorProto.INT64, AttributeProto.INT)
    assert (guard._FLOAT, guard._UINT8, guard._INT8, guard._INT32, guard._INT64, guard._BOOL,
            guard._FLOAT16, guard._DOUBLE) == (
        TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32,
        TensorProto.INT64, TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.DOUBLE)
    assert guard._EXTERNAL == TensorProto.EXTERNAL
    assert guard._GRAPH_ATTRS == (AttributeProto.GRAPH, AttributeProto.GRAPHS)


def test_the_daemon_imports_neither_onnx_nor_the_optional_extras() -> None:
    code = ("import sys, cli.main, p2pnode.daemon, p2pnode.colony, agents.guard\n"
            f"print(','.join(m for m in {NOT_AT_START!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == ""


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/maps")
def test_a_spore_that_learns_scores_and_restarts_never_loads_onnx(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    try:
        d.start()
        for text in ("The kernel schedules threads.", "Apt installs Debian packages.",
                     "dpkg unpacks a .deb file.", "Swap space holds paged-out memory."):
            d.json("POST", "/v1/teach", {"text": text})
        got = d.json("POST", "/v1/ask", {"question": "How do I install a package?"})
        assert got["sources"], got  # the encoder and the agents' pool ran
        if got["answer_id"]:
            d.json("POST", "/v1/rate", {"answer_id": got["answer_id"], "vote": "up"})
        agents = sorted(a["id"] for a in d.json("GET", "/v1/agents")["here"])
        assert agents
        assert d.proc is not None
        maps = _mapped(d.proc.pid)
        assert "onnxruntime_pybind11_state" in maps  # the map is read right
        assert [m for m in NOT_MAPPED if m in maps] == []
        d.stop()
        # Restarted, every stored agent is revived: its genome written again
        # (no onnx) hashes to what its lineage signed, or it would be skipped.
        d.start()
        assert sorted(a["id"] for a in d.json("GET", "/v1/agents")["here"]) == agents
        assert d.proc is not None
        assert [m for m in NOT_MAPPED if m in _mapped(d.proc.pid)] == []
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
