"""The colony among peers: remote scoring, feedback, placement, the registry.

* **Scoring across the swarm**: an ask sends the question's *embedding*
  (never its text) and the candidates' embeddings, signed, to at most
  `SPECIALISTS` peers whose agents' specialty is closest to the question
  (and close at all: cosine ≥ `SPECIALIST_MIN`); each answers with its
  agents' scores and fitness within `SCORE_DEADLINE_S`. Partial answers are
  fine: whoever answered in time joins the consensus.
* **Feedback**: a rating reaches every agent that took part, here or on the
  spores hosting them (a signed message), with each agent's credit.
* **Placement**: a child goes to the live peer with the most spare capacity
  (advertised in its signed peer card), as ONNX bytes over signed HTTP; the
  peer checks it (p2pnode.colony.check_guest) before anything of it runs. If
  no peer has more room than we do, the child stays here.
* **Registry**: every agent has a card in the gossiped map, signed by its
  host (fitness, interactions, specialty, alive), so every spore sees the
  whole population.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import numpy as np

from agents.genome import DIM, Agent
from p2pnode.colony import (
    Birth,
    Colony,
    Scored,
    check_guest,
    compact_specialty,
    credits,
    specialty_vector,
)
from p2pnode.dna import Dna
from p2pnode.errors import VerifyError
from p2pnode.gossip import KIND_AGENT, KIND_PEER, GossipStore, agent_key
from p2pnode.identity import Identity, node_id
from p2pnode.peers import UNSPECIFIED, PeerService
from p2pnode.records import decode_agent_card, decode_peer, make_agent_card

log = logging.getLogger("spore.agents")
T = TypeVar("T")

SPECIALISTS = 2  # peers asked to score
SPECIALIST_MIN = 0.5  # cosine of a peer agent's specialty to the question, to be asked
CARD_UPDATE_S = 10.0  # an agent's card is re-sent at most this often for a new standing
CARDS_REFRESH_S = 2.0  # the specialists' cards are read again at most this often
SCORE_DEADLINE_S = 0.25
FEEDBACK_DEADLINE_S = 2.0
ADOPT_DEADLINE_S = 5.0
MAX_CANDIDATES = 64
ANSWERS_KEPT = 4096  # answers whose participants we remember for a rating
MAX_GENOME = 1 << 20

Compute = Callable[..., Awaitable[Any]]  # runs fn(*args) on the compute thread


class NoRoom(VerifyError):
    reason = "no_room"


@dataclass
class Verdict:
    """The agents' say on one ask: consensus per candidate and who took part."""

    consensus: np.ndarray  # [C]
    rows: list[tuple[bytes | None, bytes]] = field(default_factory=list)  # (host, agent)
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    remote_hosts: int = 0


@dataclass(frozen=True)
class _Cards:
    """The other spores' live agents' specialties, unit length, one row each."""

    root: bytes  # gossip root they were read at
    built: float  # time.monotonic() then
    hosts: list[bytes]
    matrix: np.ndarray


@dataclass
class _Answer:
    q: np.ndarray
    memory: np.ndarray
    participants: list[tuple[bytes | None, bytes, float]]  # (host, agent, credit)


def _f16(a: np.ndarray) -> bytes:
    return np.asarray(a, dtype=np.float16).tobytes()


def _vecs(data: object, rows: int | None = None) -> np.ndarray:
    if not isinstance(data, bytes) or len(data) % (2 * DIM):
        raise VerifyError("embeddings must be float16 rows of 384")
    out = np.frombuffer(data, dtype=np.float16).astype(np.float32).reshape(-1, DIM)
    if rows is not None and len(out) != rows:
        raise VerifyError("wrong number of embedding rows")
    if not np.all(np.isfinite(out)):
        raise VerifyError("embeddings must be finite")
    return out


class AgentNet:
    def __init__(self, *, colony: Colony, identity: Identity, swarm: bytes,
                 store: GossipStore, compute: Compute, dna: Callable[[], Dna]) -> None:
        self.colony, self.identity, self.swarm, self.gossip = colony, identity, swarm, store
        self.compute, self.dna = compute, dna
        self.peers: PeerService | None = None
        self.counters: dict[str, int] = {}
        self._answers: OrderedDict[str, _Answer] = OrderedDict()
        self._card_seq = 0
        self._cards = _Cards(b"", -CARDS_REFRESH_S, [], np.zeros((0, 0), np.float32))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stale: dict[bytes, Agent] = {}  # cards whose update waits (publish_cards)
        self._card_sent: dict[bytes, float] = {}  # agent id -> time.monotonic() of its card

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def _rules(self) -> tuple[int, int, float]:
        f = self.dna().fields
        return (int(float(f["fitness_half_life_days"]) * 86_400_000),
                int(f["division_threshold"]), float(f["mutation_sigma"]))

    # --- life cycle ------------------------------------------------------------------

    async def start(self, peers: PeerService | None) -> None:
        self.peers = peers
        _, _, sigma = self._rules()
        agents = await self.compute(self.colony.start, self._now_ms(), sigma)
        self.publish_cards(agents)
        self._spawn(self._flush_cards())
        if peers is not None:
            peers.capacity = lambda: self.colony.spare
            peers.routes.update(score=self._serve_score, feedback=self._serve_feedback,
                                adopt=self._serve_adopt)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def publish_cards(self, agents: list[Agent], dead: list[Agent] | None = None, *,
                      updates: bool = False) -> None:
        """Our agents' registry cards (dead ones as tombstones) into gossip.
        `updates` (a rating changed their standing): an agent's card goes out
        again at most every CARD_UPDATE_S; the rest wait in `_stale` for the
        flush loop. Every card is signed and checked by every spore, and a
        rating changes a dozen of them."""
        now = time.monotonic()
        if updates:
            for a in agents:
                self._stale[a.agent_id] = a
            agents = [a for a in self._stale.values()
                      if now - self._card_sent.get(a.agent_id, -CARD_UPDATE_S) >= CARD_UPDATE_S]
        for a in agents:
            self._stale.pop(a.agent_id, None)
            self._card_sent[a.agent_id] = now
        for a in dead or []:
            self._stale.pop(a.agent_id, None)
            self._card_sent.pop(a.agent_id, None)
        items = {}
        for agent, alive in [(a, True) for a in agents] + [(a, False) for a in dead or []]:
            self._card_seq = max(self._card_seq + 1, self._now_ms())
            card = make_agent_card(
                self.identity, agent_id=agent.agent_id, swarm=self.swarm,
                generation=agent.lineage.generation, parent=agent.lineage.parent,
                fitness=agent.fitness, interactions=agent.interactions,
                specialty=compact_specialty(agent.specialty), alive=alive, seq=self._card_seq)
            items[agent_key(self.identity.public_key, agent.agent_id)] = card.wire
        if items:
            self.gossip.offer(items)

    async def _flush_cards(self) -> None:
        while True:
            await asyncio.sleep(CARD_UPDATE_S)
            live = [a for i, a in self._stale.items() if i in self.colony.agents]
            self._stale.clear()
            self.publish_cards(live)

    def registry(self) -> list[dict[str, Any]]:
        """Every agent card the gossiped map holds (the swarm's population)."""
        out = []
        for _, item in self.gossip.with_prefix(KIND_AGENT):
            card = decode_agent_card(item)
            out.append({"id": card.agent_id.hex(), "host": node_id(card.host).hex(),
                        "generation": card.generation, "parent": card.parent.hex(),
                        "fitness": round(card.fitness, 4), "interactions": card.interactions,
                        "alive": card.alive, "here": card.host == self.identity.public_key})
        return out

    # --- scoring ---------------------------------------------------------------------

    def _specialists(self, q: np.ndarray) -> list[bytes]:
        """Hosts (public keys) whose live agents are the closest specialists for q:
        one matrix product over the others' cards (rebuilt when gossip changed,
        at most every CARDS_REFRESH_S: votes change it on every rating)."""
        root, now = self.gossip.digest().root, time.monotonic()
        if root != self._cards.root and now - self._cards.built >= CARDS_REFRESH_S:
            hosts: list[bytes] = []
            vecs: list[np.ndarray] = []
            for _, item in self.gossip.with_prefix(KIND_AGENT):
                card = decode_agent_card(item)
                if card.alive and card.host != self.identity.public_key:
                    v = specialty_vector(card.specialty)
                    hosts.append(card.host)
                    vecs.append(v / (float(np.linalg.norm(v)) + 1e-9))
            matrix = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, len(q)),
                                                                              np.float32)
            self._cards = _Cards(root, now, hosts, matrix)
        cards = self._cards
        if not cards.hosts:
            return []
        sims = cards.matrix @ q.astype(np.float32)
        best: dict[bytes, float] = {}
        for i in np.flatnonzero(sims >= SPECIALIST_MIN):
            host = cards.hosts[int(i)]
            best[host] = max(best.get(host, -1.0), float(sims[i]))
        return sorted(best, key=lambda h: -best[h])[:SPECIALISTS]

    def _address(self, host: bytes) -> tuple[str, int] | None:
        item = self.gossip.get(KIND_PEER + node_id(host))
        if item is None:
            return None
        card = decode_peer(item)
        if card.host in UNSPECIFIED or self.peers is None:
            return None
        members = {(m.host, m.port): m for m in self.peers.members.live()}
        return (card.host, card.port) if (card.host, card.port) in members else None

    async def rank(self, q: np.ndarray, vecs: np.ndarray) -> Verdict:
        """The consensus of our agents and of the specialists' who answered in time."""
        vecs = vecs[:MAX_CANDIDATES]
        hosts = self._specialists(q) if self.peers is not None else []
        local = self.compute(self.colony.score, q, vecs, self._now_ms())
        remote = [self._remote_score(h, q, vecs) for h in hosts]
        results = await asyncio.gather(local, *remote)
        mine: Scored = results[0]
        rows: list[tuple[bytes | None, bytes]] = [(None, a) for a in mine.ids]
        scores, fitness = [mine.scores], [mine.fitness]
        answered = 0
        for host, got in zip(hosts, results[1:], strict=True):
            if got is None:
                continue
            answered += 1
            rows.extend((host, a) for a in got.ids)
            scores.append(got.scores)
            fitness.append(got.fitness)
        all_scores = np.concatenate(scores) if rows else np.zeros((0, len(vecs)), np.float32)
        all_fit = np.concatenate(fitness) if rows else np.zeros(0, np.float32)
        verdict = Verdict(Scored(tuple(a for _, a in rows), all_fit, all_scores).consensus()
                          if rows else np.zeros(len(vecs), np.float32), rows, all_scores,
                          answered)
        self.count("remote_scorers", answered)
        return verdict

    async def _remote_score(self, host: bytes, q: np.ndarray, vecs: np.ndarray
                            ) -> Scored | None:
        addr = self._address(host)
        if addr is None or self.peers is None:
            return None
        body = msgpack.packb([_f16(q), _f16(vecs), len(vecs)], use_bin_type=True)
        try:
            reply = await self.peers.request(*addr, "score", body, SCORE_DEADLINE_S)
            ids, fit, raw = msgpack.unpackb(reply, raw=False)
            n = len(ids)
            if not (isinstance(ids, list) and all(isinstance(i, bytes) and len(i) == 32
                                                  for i in ids) and n <= 4 * 64):
                raise VerifyError("malformed score reply")
            fitness = np.frombuffer(fit, dtype=np.float32)
            scores = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
            if len(fitness) != n or len(scores) != n * len(vecs) \
                    or not np.all(np.isfinite(fitness)):
                raise VerifyError("score reply of the wrong shape")
            return Scored(tuple(ids), fitness.copy(), scores.reshape(n, len(vecs)))
        except Exception as exc:  # a late, dead or lying peer: its say is left out
            self.count("remote_score_failed")
            log.debug("scoring at %s: %s", addr, exc)
            return None

    async def _serve_score(self, sender: bytes, body: bytes) -> bytes:
        try:
            qb, vb, n = msgpack.unpackb(body, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise VerifyError(f"malformed score request: {exc}") from exc
        if not isinstance(n, int) or not 0 < n <= MAX_CANDIDATES:
            raise VerifyError("score request: 1..64 candidates")
        q, vecs = _vecs(qb, 1)[0], _vecs(vb, n)
        got: Scored = await self.compute(self.colony.score, q, vecs, self._now_ms())
        self.count("scored_for_peers")
        out: bytes = msgpack.packb([list(got.ids), got.fitness.astype(np.float32).tobytes(),
                                    _f16(got.scores)], use_bin_type=True)
        return out

    # --- feedback --------------------------------------------------------------------

    def remember(self, answer_id: str, q: np.ndarray, memory: np.ndarray, verdict: Verdict,
                 chosen: int) -> None:
        if not verdict.rows:
            return
        credit = credits(verdict.scores, chosen)
        self._answers[answer_id] = _Answer(
            q, memory, [(h, a, float(c)) for (h, a), c in zip(verdict.rows, credit, strict=True)])
        while len(self._answers) > ANSWERS_KEPT:
            self._answers.popitem(last=False)

    async def feedback(self, answer_id: str, up: bool) -> int:
        """Send a rating to every agent that took part; returns how many."""
        answer = self._answers.get(answer_id)
        if answer is None:
            return 0
        sign = 1.0 if up else -1.0
        by_host: dict[bytes | None, dict[bytes, float]] = {}
        for host, agent, credit in answer.participants:
            by_host.setdefault(host, {})[agent] = sign * credit
        for host, deltas in by_host.items():
            if host is None:
                await self.apply_feedback(deltas, answer.q, answer.memory, up)
            else:
                self._spawn(self._send_feedback(host, deltas, answer, up))
        return len(answer.participants)

    async def _send_feedback(self, host: bytes, deltas: dict[bytes, float], answer: _Answer,
                             up: bool) -> None:
        addr = self._address(host)
        if addr is None or self.peers is None:
            self.count("feedback_undeliverable")
            return
        body = msgpack.packb([_f16(answer.q), _f16(answer.memory), up,
                              [[a, float(d)] for a, d in deltas.items()]], use_bin_type=True)
        try:
            await self.peers.request(*addr, "feedback", body, FEEDBACK_DEADLINE_S)
            self.count("feedback_sent")
        except Exception as exc:  # the host is gone: its agents miss one rating
            self.count("feedback_undeliverable")
            log.debug("feedback to %s: %s", addr, exc)

    async def _serve_feedback(self, sender: bytes, body: bytes) -> bytes:
        try:
            qb, mb, up, items = msgpack.unpackb(body, raw=False)
            deltas = {bytes(a): max(-1.0, min(1.0, float(d))) for a, d in items}
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise VerifyError(f"malformed feedback: {exc}") from exc
        if not isinstance(up, bool) or len(deltas) > 4 * 64:
            raise VerifyError("malformed feedback")
        await self.apply_feedback(deltas, _vecs(qb, 1)[0], _vecs(mb, 1)[0], up)
        self.count("feedback_received")
        return b""

    async def apply_feedback(self, deltas: dict[bytes, float], q: np.ndarray,
                             memory: np.ndarray, up: bool) -> None:
        half_life, threshold, sigma = self._rules()
        changed, births, dead = await self.compute(
            self.colony.feedback, deltas, q, memory, up, self._now_ms(), half_life, threshold,
            sigma)
        self.publish_cards(changed, dead, updates=True)
        for birth in births:
            self._spawn(self.place(birth))
        if self.peers is not None:
            self.peers.capacity_changed()

    # --- placement -------------------------------------------------------------------

    def _roomiest_peer(self) -> tuple[str, int, int] | None:
        if self.peers is None:
            return None
        live = {(m.host, m.port) for m in self.peers.members.live()}
        best: tuple[str, int, int] | None = None
        for _, item in self.gossip.with_prefix(KIND_PEER):
            card = decode_peer(item)
            if card.public_key == self.identity.public_key or (card.host, card.port) not in live:
                continue
            if best is None or card.capacity > best[2]:
                best = (card.host, card.port, card.capacity)
        return best

    async def place(self, birth: Birth) -> None:
        """A child goes to the roomiest live peer, or stays here."""
        target = self._roomiest_peer()
        if target is not None and target[2] > self.colony.spare and self.peers is not None:
            body = msgpack.packb([birth.agent.lineage.wire, birth.genome,
                                  _f16(birth.agent.specialty)], use_bin_type=True)
            try:
                await self.peers.request(target[0], target[1], "adopt", body, ADOPT_DEADLINE_S)
                self.count("children_placed_remote")
                log.info("agent %s… placed on %s:%d", birth.agent.agent_id.hex()[:12],
                         target[0], target[1])
                return
            except Exception as exc:  # it refused or is gone: keep the child here
                self.count("placement_failed")
                log.warning("placing agent %s… on %s:%d failed: %s",
                            birth.agent.agent_id.hex()[:12], target[0], target[1], exc)
        kept, dead = await self.compute(self.colony.adopt, birth, self._now_ms(), "here")
        self.count("children_kept")
        self.publish_cards([birth.agent] if kept else [], dead)
        if self.peers is not None:
            self.peers.capacity_changed()

    async def _serve_adopt(self, sender: bytes, body: bytes) -> bytes:
        try:
            lineage, genome, spec = msgpack.unpackb(body, raw=False, max_bin_len=MAX_GENOME + 4096)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise VerifyError(f"malformed adoption: {exc}") from exc
        if not all(isinstance(x, bytes) for x in (lineage, genome, spec)):
            raise VerifyError("malformed adoption")
        try:
            birth = await self.compute(check_guest, lineage, genome, spec)
        except VerifyError as exc:
            self.count(f"genome_rejected_{getattr(exc, 'reason', 'lineage')}")
            log.warning("refused a peer's agent: %s", exc)
            raise
        kept, dead = await self.compute(self.colony.adopt, birth, self._now_ms(),
                                        node_id(sender).hex()[:16])
        self.publish_cards([birth.agent] if kept else [], dead)
        if not kept:
            raise NoRoom("no room for the agent here")
        self.count("guests_adopted")
        if self.peers is not None:
            self.peers.capacity_changed()
        return b""

    def status(self) -> dict[str, Any]:
        return {"agents": len(self.colony.agents), "spare": self.colony.spare,
                "counters": {**self.counters, **self.colony.counters}}


