"""The agent pool: every agent of a spore scores every candidate in one call.

The agents' weights are stacked along an agent axis (W1 [A,384,128], b1
[A,1,128], W2 [A,128,384], b2 [A,1,384]) into one ONNX graph built here, so
a query costs one onnxruntime call whatever the number of agents::

    q [1,384] ─ MatMul W1 ─ Add b1 ─ Tanh ─ MatMul W2 ─ Add b2 ─ Add q ─ [A,1,384]
      ─ Reshape [A,384] ─ LpNormalization ─ Gemm(·, candᵀ) ─ scores [A,C]

scores[a, c] = cos(r_a, cand_c) for unit-norm candidates (the encoder's
output); it is r̂_a·c otherwise. The graph is ours, built from weights that
passed `agents.guard`, so it may use operators a genome may not.

The work is memory-bound: 64 agents are 25 MB of weights read per query.
`scripts/bench/pool.py` measures it. The weights are inputs of the graph,
not initializers: the session is built once, and a change of membership or
of one agent's weights (a rating's learning step, a birth, a death) is a
restack of numpy arrays (`Pool.rebuild`, ~1 ms for 16 agents) rather than a
new session (~40 ms). `scores` blocks: the
daemon calls it from a worker thread. onnxruntime is imported when a pool is
built, so `combine` and `reference_scores` stay importable by pure code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agents.genome import DIM, FLOAT, HIDDEN, Agent, Weights, model_bytes

__all__ = ["Pool", "PoolError", "agent_weights", "combine", "reference_scores", "stack"]

Array = npt.NDArray[np.float32]


class PoolError(Exception):
    """onnxruntime could not build or run the pool; the message says why."""


def stack(weights: Sequence[Weights]) -> tuple[Array, Array, Array, Array]:
    """W1 [A,384,128], b1 [A,1,128], W2 [A,128,384], b2 [A,1,384]."""
    return (np.stack([w.w1 for w in weights]),
            np.stack([w.b1 for w in weights])[:, None, :],
            np.stack([w.w2 for w in weights]),
            np.stack([w.b2 for w in weights])[:, None, :])


def reference_scores(weights: Sequence[Weights], q: Array, cand: Array) -> Array:
    """What the pool computes, in numpy (tests check the ONNX result against it)."""
    w1, b1, w2, b2 = stack(weights)
    q = np.asarray(q, dtype=np.float32).reshape(1, DIM)
    r = (np.tanh(q @ w1 + b1) @ w2 + b2 + q)[:, 0, :]
    r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    out: Array = r @ np.asarray(cand, dtype=np.float32).T
    return out


def _pool_model() -> bytes:
    """The graph above (its bytes written by agents.genome.model_bytes, no onnx)."""
    return model_bytes(
        "sporemind_pool",
        nodes=[("MatMul", ["q", "W1"], ["h_pre"], None, {}),
               ("Add", ["h_pre", "b1"], ["h_lin"], None, {}),
               ("Tanh", ["h_lin"], ["h"], None, {}),
               ("MatMul", ["h", "W2"], ["d_pre"], None, {}),
               ("Add", ["d_pre", "b2"], ["d"], None, {}),
               ("Add", ["q", "d"], ["r3"], None, {}),
               ("Reshape", ["r3", "r_shape"], ["r"], None, {}),
               ("LpNormalization", ["r"], ["r_unit"], None, {"axis": -1, "p": 2}),
               ("Gemm", ["r_unit", "cand"], ["scores"], None, {"transB": 1})],
        inputs=[("q", FLOAT, [1, DIM]), ("cand", FLOAT, ["C", DIM]),
                ("W1", FLOAT, ["A", DIM, HIDDEN]), ("b1", FLOAT, ["A", 1, HIDDEN]),
                ("W2", FLOAT, ["A", HIDDEN, DIM]), ("b2", FLOAT, ["A", 1, DIM])],
        outputs=[("scores", FLOAT, ["A", "C"])],
        initializers=[("r_shape", np.array([-1, DIM], dtype=np.int64))])


def _session(model: bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors have no common base
        raise PoolError(f"cannot build the agent pool: {exc}") from exc


class Pool:
    """A spore's agents behind one onnxruntime session. Safe to call from threads."""

    def __init__(self, agents: Sequence[Agent], threads: int = 1) -> None:
        self._threads = threads
        self._session: Any = None  # built at the first non-empty membership
        self._state: tuple[tuple[Agent, ...], dict[str, Array]] = ((), {})
        self.rebuild(agents)

    def __len__(self) -> int:
        return len(self.agents)

    @property
    def agents(self) -> tuple[Agent, ...]:
        """The members, in the order of the score rows."""
        return self._state[0]

    @property
    def agent_ids(self) -> tuple[bytes, ...]:
        return tuple(a.agent_id for a in self.agents)

    def rebuild(self, agents: Sequence[Agent]) -> None:
        """Restack the weights for a new membership or new weights (rows follow
        `agents`' order); each member's weights become views of the stack."""
        members = tuple(agents)
        feeds: dict[str, Array] = {}
        if members:
            if self._session is None:
                self._session = _session(_pool_model(), self._threads)
            w1, b1, w2, b2 = stack([a.weights for a in members])
            feeds = {"W1": w1, "b1": b1, "W2": w2, "b2": b2}
            # Each agent's weights become views of the stack: one copy in
            # memory, not two (0.4 MB an agent; never written in place).
            for i, a in enumerate(members):
                a.weights = Weights(w1[i], b1[i, 0], w2[i], b2[i, 0])
        # One assignment, so a concurrent `scores` sees the old pool or the new one.
        self._state = (members, feeds)

    def scores(self, q: Array, cand: Array) -> Array:
        """[A, C]: each agent's cosine between its response to q and each candidate."""
        members, feeds = self._state
        q = np.ascontiguousarray(q, dtype=np.float32).reshape(1, -1)
        cand = np.ascontiguousarray(cand, dtype=np.float32)
        if q.shape != (1, DIM) or cand.ndim != 2 or cand.shape[1] != DIM:
            raise ValueError(f"need q of {DIM} and cand [C, {DIM}], got {q.shape}, {cand.shape}")
        if not members or len(cand) == 0:
            return np.zeros((len(members), len(cand)), dtype=np.float32)
        try:
            out: Array = self._session.run(None, {"q": q, "cand": cand, **feeds})[0]
        except Exception as exc:  # onnxruntime's errors have no common base
            raise PoolError(f"agent pool run failed: {exc}") from exc
        return out


# -- consensus of the agents (pure) -----------------------------------------

# Fitness is unbounded and may be negative; a softmax gives every agent a
# positive say, depends only on fitness differences, and with temperature 1
# gives an agent one fitness point ahead e ≈ 2.7 times the say.
TEMPERATURE = 1.0


def agent_weights(agent_fitness: npt.ArrayLike, temperature: float = TEMPERATURE) -> Array:
    """Each agent's share of the consensus: softmax(fitness / temperature), sums to 1."""
    fitness = np.asarray(agent_fitness, dtype=np.float64)
    if fitness.ndim != 1 or len(fitness) == 0 or not np.all(np.isfinite(fitness)):
        raise ValueError("agent fitness must be a non-empty vector of finite numbers")
    z = fitness / temperature
    e = np.exp(z - z.max())
    out: Array = (e / e.sum()).astype(np.float32)
    return out


def combine(scores: Array, agent_fitness: npt.ArrayLike,
            temperature: float = TEMPERATURE) -> Array:
    """[C]: the fitness-weighted mean of the agents' scores [A, C]."""
    weights = agent_weights(agent_fitness, temperature)
    if scores.ndim != 2 or scores.shape[0] != len(weights):
        raise ValueError(f"scores {scores.shape} do not match {len(weights)} agents")
    out: Array = weights @ scores.astype(np.float32)
    return out

