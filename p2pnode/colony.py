"""A spore's agents: they score, are judged, learn, divide and die (DESIGN.md §6).

The colony owns this spore's agents (agents.genome) behind one batched
onnxruntime session (agents.pool) and applies the evolution policy
(agents.evolution: credit, learning, who divides, who dies) to them.
Everything here that touches an agent runs on the spore's agents' thread,
one job at a time; the event loop only carries what comes out (cards to
gossip, children to place, events).

* **Scoring**: all agents score all candidates in one call; their consensus
  is the fitness-weighted mean (agents.pool.combine).
* **Feedback**: each agent that took part is credited (agents.evolution.
  credits), a rating multiplies that by +1 (up) or -1 (down); fitness decays
  with the DNA's half-life. An agent that served well moves its specialty
  toward the question; every participant takes one small learning step.
* **Selection**: a rating lets at most one agent divide, one of the fittest
  (agents.evolution.parent); the child is its parent's stored weights plus
  N(0, σ²) from a seed, a little noise on the specialty, counters reset,
  placed by the caller on the live peer with the most spare capacity.
* **Death**: over the cap, the least fit die; agents idle for `idle_ms` die
  too (never the last one).
* **Disk** (agents.store): a child of ours is stored as (its parent's stored
  weights, seed, σ) until it learns; learnt weights are written every
  FLUSH_STEPS learning steps of an agent (or FLUSH_S), standing every
  STANDING_EVERY ratings, everything at close. A crash loses that much
  learning and standing, never an agent.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents import guard
from agents.evolution import Member, Scored, culled, derive, learn, parent, standing
from agents.genome import DIM, Agent, Weights, decode_lineage, from_onnx, new_agent, to_onnx
from agents.pool import Pool
from agents.store import (
    MAX_STEPS,
    SCHEMA,
    Row,
    Store,
    pack_steps,
    unpack_steps,
    unpack_weights,
)
from dht import compact
from p2pnode.errors import StateError, VerifyError
from p2pnode.identity import Identity
from p2pnode.peerauth import WINDOW_MS
from p2pnode.storage import connect_wal

log = logging.getLogger("spore.agents")

AGENTS_DB = "agents.sqlite3"
SPECIALTY_NOISE = 0.01
# An agent's learnt weights (400 KB, twice with the WAL's checkpoint) are
# written after this many learning steps, or this long after the first one
# not written: ~16 agents learn from every rating, so ~3 KiB a rating (at
# 1,000 steps it was 12.6, measured), not 400 KB an agent a minute as before.
FLUSH_STEPS, FLUSH_S = 4000, 6 * 3600.0
STANDING_EVERY, STANDING_S = 32, 3600.0  # ratings (or seconds) between standing writes
EVENTS = 256  # recent births, divisions and deaths kept for /v1/agents
CLOCK_SKEW_MS = WINDOW_MS  # a guest born later than now + this is refused
_SEEDS = 2**63


@dataclass
class Kept:
    """How an agent's weights are stored: `saved` (what its children derive
    from) is `base` + `steps` until it learnt, then its `version`."""

    saved: Weights
    base: bytes | None = None
    steps: tuple[tuple[int, float], ...] = ()
    version: bytes | None = None
    unsaved: int = 0  # learning steps not written
    since: float = 0.0  # time.monotonic() of the first of them


@dataclass
class Birth:
    """A child waiting for a host (the caller places it, or keeps it here)."""

    agent: Agent
    genome: bytes
    kept: Kept | None = None  # ours: how it is stored here (None: whole, as a guest)


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
        self.kept: dict[bytes, Kept] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS)
        self.counters: dict[str, int] = {}
        self.pool = Pool([])
        self._rated: set[bytes] = set()  # agents whose standing is not written yet
        self._ratings, self._standing_at = 0, time.monotonic()
        self._lock = threading.Lock()  # the agents' thread, and tests calling directly
        self._db: sqlite3.Connection | None = None
        self._store: Store | None = None
        if path is not None:
            self._open(path)

    # --- persistence -----------------------------------------------------------------

    def _open(self, path: Path) -> None:
        self._db = connect_wal(path, SCHEMA, what="the agents store")
        self._store = store = Store(self._db)
        try:
            store.sweep()
            rows = list(store.rows())
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot read the agents store {path}: {exc}") from exc
        for row in rows:
            try:
                agent, kept = self._revive(store, row)
            except (VerifyError, ValueError) as exc:  # our own file: skipped, not fatal
                log.error("skipping a stored agent: %s", exc)
                continue
            self.agents[agent.agent_id], self.kept[agent.agent_id] = agent, kept
            self.good[agent.agent_id], self.last_used[agent.agent_id] = row.good, row.last_used_ms

    @staticmethod
    def _revive(store: Store, row: Row) -> tuple[Agent, Kept]:
        """An agent from its row: its birth weights checked bit for bit against
        the genome hash its lineage signed, then what it learnt if that reads."""
        lin = decode_lineage(row.lineage)
        steps: tuple[tuple[int, float], ...] = ()
        if row.genome:
            lin.check_genome(row.genome)
            birth = from_onnx(row.genome)
        else:
            blob = None if row.base is None else store.blob(row.base)
            if blob is None:
                raise ValueError(f"agent {lin.agent_id.hex()[:12]}…: its base weights are gone")
            steps = unpack_steps(row.steps)
            birth = derive(unpack_weights(blob), steps)
            lin.check_genome(to_onnx(birth))
        weights, version = birth, row.version
        if row.learnt is not None:
            try:
                weights = unpack_weights(row.learnt)
            except ValueError as exc:  # the birth weights are still there
                log.warning("agent %s…: %s; back to its birth weights", lin.agent_id.hex()[:12],
                            exc)
                version = None
        agent = Agent(lin, weights, np.frombuffer(row.specialty, np.float32).copy(),
                      row.interactions, row.fitness, row.fitness_ms)
        return agent, Kept(weights, row.base, steps, version)

    def _insert(self, births: list[Birth]) -> None:
        """New rows: a child of ours as its derivation while its base is stored,
        anything else (a guest) with its genome."""
        if self._store is None or not births:
            return
        rows = []
        for b in births:
            a, k = b.agent, b.kept
            derived = k is not None and k.base is not None and self._store.has(k.base)
            rows.append((a.agent_id, a.lineage.wire, b"" if derived else b.genome,
                         a.specialty.tobytes(), a.interactions, a.fitness, a.fitness_ms,
                         self.good.get(a.agent_id, 0), self.last_used.get(a.agent_id, 0),
                         k.base if derived and k else None,
                         pack_steps(k.steps) if derived and k else None))
        self._write(self._store.insert, rows)

    def _persist(self, changed: list[Agent], now: float, force: bool = False) -> None:
        """Standing every STANDING_EVERY ratings; learnt weights of an agent
        every FLUSH_STEPS steps or FLUSH_S; all of it when forced (close)."""
        self._rated.update(a.agent_id for a in changed)
        self._ratings += 1
        if force or self._ratings >= STANDING_EVERY or now - self._standing_at >= STANDING_S:
            self._write_standing(now)
        due = [i for i, k in self.kept.items() if k.unsaved and (
            force or k.unsaved >= FLUSH_STEPS or now - k.since >= FLUSH_S)]
        self._flush_learnt(due)

    def _write_standing(self, now: float) -> None:
        live = [self.agents[i] for i in self._rated if i in self.agents]
        self._rated.clear()
        self._ratings, self._standing_at = 0, now
        if self._store is not None and live:
            self._write(self._store.standing, [
                (a.specialty.tobytes(), a.interactions, a.fitness, a.fitness_ms,
                 self.good.get(a.agent_id, 0), self.last_used.get(a.agent_id, 0), a.agent_id)
                for a in live])

    def _flush_learnt(self, ids: list[bytes]) -> None:
        for i in ids:
            agent, kept = self.agents.get(i), self.kept.get(i)
            if agent is None or kept is None:
                continue
            if self._store is not None:
                try:
                    kept.version = self._store.learnt(i, agent.weights)
                except sqlite3.DatabaseError as exc:
                    self.count("persist_errors")
                    log.error("agents store: %s", exc)
                    continue
                self.count("learned_flushed")
            kept.saved, kept.unsaved = agent.weights, 0

    def _write(self, fn: Any, rows: list[tuple[Any, ...]]) -> None:
        try:
            fn(rows)
        except sqlite3.DatabaseError as exc:
            self.count("persist_errors")
            log.error("agents store: %s", exc)

    def _delete(self, agent_id: bytes) -> None:
        if self._store is not None:
            try:
                self._store.delete(agent_id)
            except sqlite3.DatabaseError as exc:
                log.error("agents store: %s", exc)

    def close(self) -> None:
        if self._db is not None:
            with self._lock:
                self._persist([], time.monotonic(), force=True)
            self._db.close()
            self._db = self._store = None

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
        """Load what is stored; a new spore seeds its first agents (one stored
        set of weights and their mutations). Returns the agents whose cards
        should be (re)published."""
        with self._lock:
            for agent in self.agents.values():  # a claimed future time never stops decay
                agent.fitness_ms = min(agent.fitness_ms, now_ms)
            if not self.agents:
                base = Weights.initial(self.rng)
                ref = None if self._store is None else self._store.put_weights(base)
                births = []
                for i in range(self.seed_agents):
                    steps = () if i == 0 else ((int(self.rng.integers(_SEEDS)), sigma),)
                    weights = derive(base, steps)
                    agent = new_agent(self.identity, weights, created_ms=now_ms)
                    births.append(Birth(agent, b"", Kept(weights, ref, steps)))
                    self._add(agent, now_ms, "born", births[-1].kept)
                self._insert(births)
            self._restack()
            return list(self.agents.values())

    def _restack(self) -> None:
        """The pool's stack for the members now; the weights an agent has not
        changed since they were saved are kept once, as views of the stack
        (agents.pool.Pool.rebuild), not twice."""
        had = {agent_id: a.weights for agent_id, a in self.agents.items()}
        self.pool.rebuild(list(self.agents.values()))
        for agent_id, agent in self.agents.items():
            kept = self.kept.get(agent_id)
            if kept is None:
                continue
            if kept.saved is had[agent_id]:
                kept.saved = agent.weights
            elif kept.saved.w1.base is not None and not np.shares_memory(
                    kept.saved.w1, agent.weights.w1.base):
                # It learnt since: what was saved is a view of an older stack,
                # which it alone would keep whole. Its own copy instead.
                kept.saved = Weights(*(a.copy() for a in kept.saved.arrays()))

    def _add(self, agent: Agent, now_ms: int, why: str, kept: Kept | None, **more: Any
             ) -> None:
        self.agents[agent.agent_id] = agent
        self.kept[agent.agent_id] = kept or Kept(agent.weights)
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

    def member(self, agent: Agent) -> Member:
        """What the evolution policy knows of an agent: only this spore's own
        observations (a lineage's claimed time or fitness never counts)."""
        i = agent.agent_id
        return Member(i, agent.fitness, self.good.get(i, 0), self.is_guest(agent),
                      self.joined.get(i, 0), self.last_used.get(i, 0))

    def standing(self, agent: Agent) -> tuple[float, bool, int, bytes]:
        """Who dies first (the smallest): agents.evolution.standing."""
        return standing(self.member(agent))

    # --- scoring (agents' thread) -----------------------------------------------------

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

    # --- feedback, learning, division, death (agents' thread) -------------------------

    def feedback(self, deltas: dict[bytes, float], q: np.ndarray, memory: np.ndarray,
                 up: bool, now_ms: int, half_life_ms: int, threshold: int, sigma: float
                 ) -> tuple[list[Agent], list[Birth], list[Agent]]:
        """Apply a rating to the agents here that took part. Returns (agents
        changed, children to place, agents that died)."""
        with self._lock:
            changed: list[Agent] = []
            mono = time.monotonic()
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
                kept = self.kept[agent_id]
                kept.since = kept.since if kept.unsaved else mono
                kept.unsaved += 1
                changed.append(agent)
            chosen = parent([self.member(a) for a in self.agents.values()], threshold)
            births = [] if chosen is None else [self._divide(self.agents[chosen], now_ms, sigma)]
            dead = self._cull(now_ms)
            self._persist(changed, mono)
            self._restack()
            self.count("feedback")
            return changed, births, dead

    def _divide(self, parent: Agent, now_ms: int, sigma: float) -> Birth:
        """A child of `parent`'s stored weights (what it learnt since is its
        own): stored as (those weights, seed, σ)."""
        self.good[parent.agent_id] = 0
        kept = self.kept[parent.agent_id]
        if kept.version is None and (kept.base is None or len(kept.steps) >= MAX_STEPS):
            self._flush_learnt([parent.agent_id])  # a guest's: stored whole, so far
        step = ((int(self.rng.integers(_SEEDS)), sigma),)
        weights = derive(kept.saved, step)
        base, steps = ((kept.version, step) if kept.version is not None
                       else (kept.base, kept.steps + step))
        child = new_agent(self.identity, weights, created_ms=now_ms, parent=parent.lineage)
        child.specialty = (parent.specialty + SPECIALTY_NOISE
                           * self.rng.standard_normal(DIM)).astype(np.float32)
        # Half its parent's standing: a newborn in a full pool is not the first to die.
        child.fitness = parent.fitness / 2
        fit = np.asarray([a.fitness for a in self.agents.values()])
        self.event("divided", parent, now_ms, child=child.agent_id.hex(),
                   fitness=round(parent.fitness, 3), population_mean=round(float(fit.mean()), 3),
                   population_std=round(float(fit.std()), 3))
        return Birth(child, to_onnx(weights), Kept(weights, base, steps))

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
                self._add(agent, now_ms, "adopted", None, origin=origin)
                dead = [self._kill(i, now_ms, "made room for a guest") for i in victims]
            else:
                self._add(agent, now_ms, "born", birth.kept, origin=origin)
                dead = self._cull(now_ms)
            kept = agent.agent_id in self.agents
            if kept:
                self._insert([birth])
            self._restack()
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
        members = [self.member(a) for a in self.agents.values()]
        return [self._kill(i, now_ms, why)
                for i, why in culled(members, self.max_agents, now_ms, self.idle_ms)]

    def _kill(self, agent_id: bytes, now_ms: int, why: str) -> Agent:
        agent = self.agents.pop(agent_id)
        for book in (self.good, self.last_used, self.joined, self.kept):
            book.pop(agent_id, None)
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
    weights = from_onnx(genome)  # the guard's checks, parsed once
    lineage.check_genome(genome)
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


