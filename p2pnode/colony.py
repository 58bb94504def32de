"""A spore's agents: they score, are judged, learn, divide and die (DESIGN.md §6).

The colony owns this spore's agents (agents.genome) behind one batched
onnxruntime session (agents.pool). Everything here that touches an agent
runs on the spore's compute thread, one job at a time; the event loop only
carries what comes out (cards to gossip, children to place, events).

* **Scoring**: all agents score all candidates in one call; their consensus
  is the fitness-weighted mean (agents.pool.combine).
* **Feedback**: the asker credits each agent that took part by how much it
  preferred the rated memory over the other candidates (a z-score in
  [-1, 1]); a rating multiplies that by +1 (up) or -1 (down). Fitness decays
  with the DNA's half-life. An agent that served well moves its specialty
  toward the question and takes one small gradient step that brings its
  response closer to the rated memory (away from it after a down vote).
* **Division**: after `division_threshold` good ratings an agent divides:
  the child is a mutated copy (N(0, σ²) on every weight, σ from the DNA; a
  little noise on the specialty), counters reset, placed by the caller on
  the live peer with the most spare capacity.
* **Death**: over the cap, the least fit die; agents idle for `idle_ms` die
  too (never the last one).
* **Guests** (a peer's children, `check_guest`): a guest's standing here is
  only what this spore measured (fitness from 0 at arrival, its arrival time
  on our clock), never what its lineage claims. A guest takes spare room or
  the place of a worse guest, never an agent of this spore's own; each peer
  may have `guests_per_peer` of them here, all peers `max_guests`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents import guard
from agents.genome import (
    DIM,
    INITIALIZERS,
    Agent,
    Weights,
    decode_lineage,
    from_onnx,
    mutate,
    new_agent,
    to_onnx,
)
from agents.pool import Pool, combine
from dht import compact
from p2pnode.errors import StateError, VerifyError
from p2pnode.identity import Identity
from p2pnode.peerauth import WINDOW_MS
from p2pnode.storage import connect_wal

log = logging.getLogger("spore.agents")

AGENTS_DB = "agents.sqlite3"
LEARNING_RATE = 0.01  # per rating: hundreds of ratings must not carry an agent far
SPECIALTY_NOISE = 0.01
LEARNED_FLUSH_S = 60.0  # an agent's learnt weights are written at most this often
EVENTS = 256  # recent births, divisions and deaths kept for /v1/agents
CLOCK_SKEW_MS = WINDOW_MS  # a guest born later than now + this is refused


@dataclass(frozen=True)
class Scored:
    """One pool run: agent ids, their fitness, and scores [A, C]."""

    ids: tuple[bytes, ...]
    fitness: np.ndarray
    scores: np.ndarray

    def consensus(self) -> np.ndarray:
        """The fitness-weighted mean of the agents' scores. Fitness is unbounded
        (credits add up), so it is taken relative to its spread: the fittest
        agents count more, but one old agent never silences all the others."""
        if not self.ids:
            return np.zeros(0, np.float32)
        spread = float(np.std(self.fitness)) if len(self.fitness) > 1 else 0.0
        return combine(self.scores, self.fitness, temperature=max(1.0, spread))


def credits(scores: np.ndarray, chosen: int) -> np.ndarray:
    """How much each agent (row) preferred candidate `chosen` over the others:
    its score's z-score among that agent's scores, clipped to [-1, 1]."""
    if scores.shape[1] < 2:
        return np.zeros(scores.shape[0], dtype=np.float32)
    mean = scores.mean(axis=1)
    std = scores.std(axis=1) + 1e-6
    out: np.ndarray = np.clip((scores[:, chosen] - mean) / std, -1.0, 1.0).astype(np.float32)
    return out


def learn(w: Weights, q: np.ndarray, memory: np.ndarray, sign: float,
          rate: float = LEARNING_RATE) -> Weights:
    """One step of the output layer along ±∇ cos(r(q), memory) (W2 and b2 only:
    W1 stays the random projection every lineage shares)."""
    h = np.tanh(q @ w.w1 + w.b1)
    r = q + h @ w.w2 + w.b2
    norm = float(np.linalg.norm(r)) + 1e-9
    grad = memory / norm - float(r @ memory) * r / norm**3  # ∂cos/∂r
    step = (sign * rate * grad).astype(np.float32)
    return Weights(w.w1, w.b1, (w.w2 + np.outer(h, step)).astype(np.float32),
                   (w.b2 + step).astype(np.float32))


@dataclass
class Birth:
    """A child waiting for a host (the caller places it, or keeps it here)."""

    agent: Agent
    genome: bytes


def _pack_weights(w: Weights) -> bytes:
    return b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in w.arrays())


def _unpack_weights(data: bytes) -> Weights:
    """Weights from `_pack_weights`; ValueError when the bytes do not fit."""
    sizes = [int(np.prod(shape)) for shape in INITIALIZERS.values()]
    if len(data) != 4 * sum(sizes):
        raise ValueError(f"learnt weights of {len(data)} bytes, expected {4 * sum(sizes)}")
    flat = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(flat).all():
        raise ValueError("learnt weights are not finite")
    parts, at = [], 0
    for size, shape in zip(sizes, INITIALIZERS.values(), strict=True):
        parts.append(flat[at:at + size].reshape(shape).copy())
        at += size
    return Weights(*parts)


class Colony:
    def __init__(self, *, identity: Identity, path: Path | None, max_agents: int = 16,
                 seed_agents: int = 4, idle_ms: int = 7 * 86_400_000,
                 rng: np.random.Generator | None = None) -> None:
        self.identity, self.max_agents, self.idle_ms = identity, max_agents, idle_ms
        self.seed_agents = seed_agents
        self.max_guests = max(1, max_agents // 2)
        self.guests_per_peer = max(1, max_agents // 4)
        self.rng = rng or np.random.default_rng()
        self.agents: dict[bytes, Agent] = {}
        self.good: dict[bytes, int] = {}  # good ratings since birth or the last division
        self.last_used: dict[bytes, int] = {}
        self.joined: dict[bytes, int] = {}  # arrival here, our clock (0: loaded at start)
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS)
        self.counters: dict[str, int] = {}
        self.pool = Pool([])
        self._dirty: dict[bytes, float] = {}  # agents whose learnt weights are not stored yet
        self._lock = threading.Lock()  # the compute thread, and tests calling directly
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._open(path)

    # --- persistence -----------------------------------------------------------------

    def _open(self, path: Path) -> None:
        self._db = connect_wal(
            path, "CREATE TABLE IF NOT EXISTS agents(id BLOB PRIMARY KEY, lineage BLOB NOT NULL,"
            " genome BLOB NOT NULL, specialty BLOB NOT NULL, interactions INTEGER NOT NULL,"
            " fitness REAL NOT NULL, fitness_ms INTEGER NOT NULL, good INTEGER NOT NULL,"
            " last_used_ms INTEGER NOT NULL)", what="the agents store")
        try:
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(agents)")}
            if "learned" not in columns:  # stores from before learning was kept apart
                self._db.execute("ALTER TABLE agents ADD COLUMN learned BLOB")
            rows = self._db.execute("SELECT lineage, genome, specialty, interactions, fitness,"
                                    " fitness_ms, good, last_used_ms, learned FROM agents"
                                    ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot read the agents store {path}: {exc}") from exc
        for lineage, genome, spec, interactions, fit, fit_ms, good, used, learned in rows:
            try:
                lin = decode_lineage(lineage)
                lin.check_genome(genome)
                weights = from_onnx(genome)
            except VerifyError as exc:  # our own file: a broken row is skipped, not fatal
                log.error("skipping a stored agent: %s", exc)
                continue
            if learned is not None:
                try:
                    weights = _unpack_weights(learned)
                except ValueError as exc:  # the signed genome is still there
                    log.warning("agent %s…: %s; back to its birth weights", lin.agent_id.hex()[:12],
                                exc)
            agent = Agent(lin, weights, np.frombuffer(spec, np.float32).copy(), interactions,
                          fit, fit_ms)
            self.agents[agent.agent_id] = agent
            self.good[agent.agent_id], self.last_used[agent.agent_id] = good, used

    def _insert(self, agents: Sequence[Agent], genomes: Sequence[bytes] | None = None) -> None:
        """A new agent's row: its genome as its lineage signed it (birth weights)."""
        if self._db is None or not agents:
            return
        genomes = genomes or [to_onnx(a.weights) for a in agents]
        rows = [(a.agent_id, a.lineage.wire, g, a.specialty.tobytes(), a.interactions,
                 a.fitness, a.fitness_ms, self.good.get(a.agent_id, 0),
                 self.last_used.get(a.agent_id, 0), None)
                for a, g in zip(agents, genomes, strict=True)]
        self._write("INSERT OR REPLACE INTO agents VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def _update(self, agents: Sequence[Agent], now: float) -> None:
        """Standing after a rating; the learnt weights (400 KB an agent) at most
        every LEARNED_FLUSH_S an agent, and all of them at close: a crash loses
        at most that much learning, never an agent (the signed genome stays)."""
        if self._db is None or not agents:
            return
        for a in agents:
            self._dirty.setdefault(a.agent_id, now)
        self._write("UPDATE agents SET specialty=?, interactions=?, fitness=?, fitness_ms=?,"
                    " good=?, last_used_ms=? WHERE id=?",
                    [(a.specialty.tobytes(), a.interactions, a.fitness, a.fitness_ms,
                      self.good.get(a.agent_id, 0), self.last_used.get(a.agent_id, 0),
                      a.agent_id) for a in agents])
        self._flush_learned(now - LEARNED_FLUSH_S)

    def _flush_learned(self, older_than: float) -> None:
        due = [i for i, since in self._dirty.items() if since <= older_than]
        rows = [(_pack_weights(self.agents[i].weights), i) for i in due if i in self.agents]
        for i in due:
            del self._dirty[i]
        if rows:
            self._write("UPDATE agents SET learned=? WHERE id=?", rows)
            self.count("learned_flushed", len(rows))

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        assert self._db is not None
        try:
            self._db.executemany(sql, rows)
        except sqlite3.DatabaseError as exc:
            self.count("persist_errors")
            log.error("agents store: %s", exc)

    def _delete(self, agent_id: bytes) -> None:
        if self._db is not None:
            try:
                self._db.execute("DELETE FROM agents WHERE id = ?", (agent_id,))
            except sqlite3.DatabaseError as exc:
                log.error("agents store: %s", exc)

    def close(self) -> None:
        if self._db is not None:
            with self._lock:
                self._flush_learned(float("inf"))
            self._db.close()
            self._db = None

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def event(self, kind: str, agent: Agent, now_ms: int, **more: Any) -> None:
        entry = {"event": kind, "agent": agent.agent_id.hex(), "generation":
                 agent.lineage.generation, "parent": agent.lineage.parent.hex(),
                 "at_ms": now_ms, **more}
        self.events.append(entry)
        self.count(kind)
        log.info("agent %s… %s (generation %d%s)", agent.agent_id.hex()[:12], kind,
                 agent.lineage.generation,
                 "".join(f", {k} {v}" for k, v in more.items()))

    # --- life --------------------------------------------------------------------------

    def start(self, now_ms: int, sigma: float) -> list[Agent]:
        """Load what is stored; a new spore seeds its first agents. Returns the
        agents whose cards should be (re)published."""
        with self._lock:
            for agent in self.agents.values():  # a claimed future time never stops decay
                agent.fitness_ms = min(agent.fitness_ms, now_ms)
            if not self.agents:
                base = Weights.initial(self.rng)
                for i in range(self.seed_agents):
                    weights = base if i == 0 else mutate(base, sigma, self.rng)
                    agent = new_agent(self.identity, weights, created_ms=now_ms)
                    self._add(agent, now_ms, "born")
                self._insert(list(self.agents.values()))
            self.pool.rebuild(list(self.agents.values()))
            return list(self.agents.values())

    def _add(self, agent: Agent, now_ms: int, why: str, **more: Any) -> None:
        self.agents[agent.agent_id] = agent
        self.good[agent.agent_id] = 0
        self.last_used[agent.agent_id] = self.joined[agent.agent_id] = now_ms
        self.event(why, agent, now_ms, **more)

    @property
    def spare(self) -> int:
        return max(0, self.max_agents - len(self.agents))

    def is_guest(self, agent: Agent) -> bool:
        return agent.lineage.creator != self.identity.public_key

    @property
    def guest_room(self) -> int:
        """Guests this spore would take now (what its peer card advertises)."""
        guests = sum(1 for a in self.agents.values() if self.is_guest(a))
        return max(0, min(self.spare, self.max_guests - guests))

    def standing(self, agent: Agent) -> tuple[float, bool, int, bytes]:
        """Who dies first (the smallest): the least fit as measured here, a
        guest before one of ours, the latest arrival here. Only this spore's
        own observations: a lineage's claimed time or fitness never counts."""
        return (agent.fitness, not self.is_guest(agent), -self.joined.get(agent.agent_id, 0),
                agent.agent_id)

    # --- scoring (compute thread) -----------------------------------------------------

    def score(self, q: np.ndarray, cand: np.ndarray, now_ms: int) -> Scored:
        """Every agent's scores; an agent whose scores are not finite is left
        out (and counted), so it never spoils the consensus of the others."""
        pool = self.pool
        members = pool.agents
        scores = pool.scores(q, cand) if len(cand) else np.zeros((len(members), 0), np.float32)
        fit = np.asarray([a.fitness for a in members], dtype=np.float32)
        ok = np.isfinite(scores).all(axis=1) & np.isfinite(fit)
        if not ok.all():
            self.count("agent_scores_not_finite", int((~ok).sum()))
            members = tuple(a for a, good in zip(members, ok, strict=True) if good)
            scores, fit = scores[ok], fit[ok]
        for a in members:
            self.last_used[a.agent_id] = now_ms
        return Scored(tuple(a.agent_id for a in members), fit, scores)

    # --- feedback, learning, division, death (compute thread) -------------------------

    def feedback(self, deltas: dict[bytes, float], q: np.ndarray, memory: np.ndarray,
                 up: bool, now_ms: int, half_life_ms: int, threshold: int, sigma: float
                 ) -> tuple[list[Agent], list[Birth], list[Agent]]:
        """Apply a rating to the agents here that took part. Returns (agents
        changed, children to place, agents that died)."""
        with self._lock:
            changed: list[Agent] = []
            births: list[Birth] = []
            for agent_id, delta in deltas.items():
                agent = self.agents.get(agent_id)
                if agent is None:
                    self.count("feedback_unknown_agent")
                    continue
                agent.feedback(float(delta), now_ms, half_life_ms)
                if delta > 0:
                    agent.served_well(q)
                    self.good[agent_id] = self.good.get(agent_id, 0) + 1
                agent.weights = learn(agent.weights, q, memory, (1.0 if up else -1.0)
                                      * min(1.0, abs(float(delta))))
                changed.append(agent)
                if self.good[agent_id] >= threshold and agent.fitness > 0:
                    births.append(self._divide(agent, now_ms, sigma))
            dead = self._cull(now_ms)
            self._update(changed, time.monotonic())
            self.pool.rebuild(list(self.agents.values()))
            self.count("feedback")
            return changed, births, dead

    def _divide(self, parent: Agent, now_ms: int, sigma: float) -> Birth:
        self.good[parent.agent_id] = 0
        weights = mutate(parent.weights, sigma, self.rng)
        child = new_agent(self.identity, weights, created_ms=now_ms, parent=parent.lineage)
        child.specialty = (parent.specialty + SPECIALTY_NOISE
                           * self.rng.standard_normal(DIM)).astype(np.float32)
        # Half its parent's standing: a newborn in a full pool is not the first to die.
        child.fitness = parent.fitness / 2
        self.event("divided", parent, now_ms, child=child.agent_id.hex())
        return Birth(child, to_onnx(weights))

    def adopt(self, birth: Birth, now_ms: int, origin: str) -> tuple[bool, list[Agent]]:
        """Take a child (ours, or a peer's after `check_guest`) into the pool;
        returns whether it stayed, and who died to make room. A guest that
        would find no room raises Rejected (guest_cap, guests_full, no_room)
        and changes nothing."""
        agent = birth.agent
        with self._lock:
            if agent.agent_id in self.agents:
                return True, []
            if self.is_guest(agent):
                victims = self._room_for_guest(agent.lineage.creator, agent.agent_id, now_ms)
                # Its standing here starts now, from what we measure.
                agent.fitness, agent.fitness_ms, agent.interactions = 0.0, now_ms, 0
                self._add(agent, now_ms, "adopted", origin=origin)
                dead = [self._kill(i, now_ms, "made room for a guest") for i in victims]
            else:
                self._add(agent, now_ms, "born", origin=origin)
                dead = self._cull(now_ms)
            kept = agent.agent_id in self.agents
            if kept:
                self._insert([agent], [birth.genome])
            self.pool.rebuild(list(self.agents.values()))
            return kept, dead

    @staticmethod
    def admit(lineage_wire: bytes, sender: bytes, now_ms: int) -> None:
        """Rejected unless a guest of this lineage, sent by `sender`, is the
        sender's own child, born by now (give or take the clock skew). Cheap:
        before its genome is checked (`adopt` then finds it room, or not)."""
        try:
            lineage = decode_lineage(lineage_wire)
        except VerifyError as exc:
            raise guard.Rejected("lineage", str(exc)) from exc
        if lineage.creator != sender:
            raise guard.Rejected("not_creator", "a guest must be the sender's own child")
        if lineage.created_ms > now_ms + CLOCK_SKEW_MS:
            raise guard.Rejected("from_the_future", f"born {lineage.created_ms - now_ms} ms on")

    def _room_for_guest(self, creator: bytes, agent_id: bytes, now_ms: int) -> list[bytes]:
        """The guests that must die for a new one to stay (worse ones only, never
        an agent of ours), or Rejected when the newcomer itself is the worst."""
        rank = {a.agent_id: (self.standing(a), a.lineage.creator)
                for a in self.agents.values() if self.is_guest(a)}
        rank[agent_id] = ((0.0, False, -now_ms, agent_id), creator)
        victims: list[bytes] = []
        for cap, reason, same in ((self.guests_per_peer, "guest_cap", True),
                                  (self.max_guests, "guests_full", False)):
            while True:
                left = [i for i, (_, c) in rank.items()
                        if i not in victims and (c == creator or not same)]
                if len(left) <= cap:
                    break
                victims.append(_worst(left, rank, reason, agent_id))
        while len(self.agents) + 1 - len(victims) > self.max_agents:
            victims.append(_worst([i for i in rank if i not in victims], rank, "no_room",
                                  agent_id))
        return victims

    def _cull(self, now_ms: int) -> list[Agent]:
        """The long idle die, then the least fit until the pool fits its cap."""
        dead = []
        for agent_id, used in list(self.last_used.items()):
            if len(self.agents) > 1 and now_ms - used > self.idle_ms and agent_id in self.agents:
                dead.append(self._kill(agent_id, now_ms, "idle"))
        while len(self.agents) > self.max_agents:
            worst = min(self.agents.values(), key=self.standing)
            dead.append(self._kill(worst.agent_id, now_ms, "least fit"))
        return dead

    def _kill(self, agent_id: bytes, now_ms: int, why: str) -> Agent:
        agent = self.agents.pop(agent_id)
        self.good.pop(agent_id, None)
        self.last_used.pop(agent_id, None)
        self.joined.pop(agent_id, None)
        self._delete(agent_id)
        self.event("died", agent, now_ms, cause=why, fitness=round(agent.fitness, 3))
        return agent


def _worst(ids: list[bytes], rank: dict[bytes, tuple[tuple[float, bool, int, bytes], bytes]],
           reason: str, newcomer: bytes) -> bytes:
    worst = min(ids, key=lambda i: rank[i][0])
    if worst == newcomer:
        raise guard.Rejected(reason, f"no room for another guest here ({reason})")
    return worst


def check_guest(lineage_wire: bytes, genome: bytes, specialty: bytes) -> Birth:
    """A peer's child, checked before anything of it runs here: the lineage is
    signed, the genome passes the guard (size, operators, opset, no external
    data, shapes, the one architecture, bounded weights) and is the one the
    lineage signed; the specialty is 384 finite float16 (or none)."""
    lineage = decode_lineage(lineage_wire)
    guard.check(genome)
    lineage.check_genome(genome)
    weights = from_onnx(genome)
    if len(specialty) not in (0, 2 * DIM):
        raise guard.Rejected("bad_specialty", f"a specialty of {len(specialty)} bytes")
    spec = np.frombuffer(specialty, dtype=np.float16).astype(np.float32) \
        if specialty else np.zeros(DIM, np.float32)
    if not np.isfinite(spec).all():
        raise guard.Rejected("bad_specialty", "a specialty that is not finite")
    return Birth(Agent(lineage, weights, spec), genome)


def compact_specialty(v: np.ndarray) -> bytes:
    codes, scales = compact.to_int8(np.asarray(v, np.float32)[None, :])
    return compact.pack(codes[0], float(scales[0]))


def specialty_vector(data: bytes, dim: int = DIM) -> np.ndarray:
    codes, scale = compact.unpack(data, dim)
    out: np.ndarray = codes.astype(np.float32) * scale
    return out


