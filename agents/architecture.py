"""The one agent architecture and a genome's limits: data only, no onnx.

agents.genome builds this graph and agents.guard accepts only this graph, so
both read it from here; the guard never imports the genome module (which
calls the guard), and a peer's genome is parsed once, by the guard.

An agent maps a query embedding ``q`` [1, 384] to a response ``r`` [1, 384]
through a residual bottleneck (agents.genome says why)::

    q ─ MatMul W1 ─ Add b1 ─ Tanh ─ MatMul W2 ─ Add b2 ─┐
    └──────────────────────────────────────────── Add ──┴─ r
"""

from __future__ import annotations

__all__ = ["DIM", "HIDDEN", "INITIALIZERS", "INPUT", "IR_VERSION", "MAX_LINEAGE_BYTES",
           "MAX_WEIGHT", "NODES", "OPSET", "OUTPUT"]

DIM, HIDDEN = 384, 128
OPSET, IR_VERSION = 17, 8  # onnx's own pairing for opset 17; onnxruntime 1.32 runs both
MAX_LINEAGE_BYTES = 1024  # an agent's signed lineage (agents.genome.decode_lineage)
MAX_WEIGHT = 1e4  # |parameter| of a genome (an honest one stays under ~10; float32 never overflows)

# In graph order: (op, inputs, output, node name).
NODES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("MatMul", ("q", "W1"), "h_pre", "mm1"),
    ("Add", ("h_pre", "b1"), "h_lin", "add1"),
    ("Tanh", ("h_lin",), "h", "tanh"),
    ("MatMul", ("h", "W2"), "d_pre", "mm2"),
    ("Add", ("d_pre", "b2"), "d", "add2"),
    ("Add", ("q", "d"), "r", "skip"),
)
INPUT, OUTPUT = ("q", (1, DIM)), ("r", (1, DIM))
# The parameters, in the order agents.genome.Weights holds them.
INITIALIZERS: dict[str, tuple[int, ...]] = {
    "W1": (DIM, HIDDEN), "b1": (HIDDEN,), "W2": (HIDDEN, DIM), "b2": (DIM,),
}
