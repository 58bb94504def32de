"""The colony among peers: remote scoring, feedback, placement, the registry.

* **Scoring across the swarm**: an ask sends the question's *embedding*
  (never its text) and the candidates' embeddings, signed, to at most
  `SPECIALISTS` peers whose agents' specialty is closest to the question
  (and close at all: cosine ≥ `SPECIALIST_MIN`); each answers with its
  agents' scores and fitness within `SCORE_DEADLINE_S`. Partial answers are
  fine: whoever answered in time joins the consensus.
* **Feedback**: a rating reaches every agent that took part, here or on the
  spores hosting them (a signed message naming the scoring it rates). A
  spore takes a peer's rating only for a scoring it did for that same peer
  (remembered, bounded and expiring: `Scorings`), once, and computes each
  agent's credit from its own scores.
* **Placement**: a child goes to the live peer with the most room for guests
  (advertised in its signed peer card), as ONNX bytes over signed HTTP; the
  peer checks it (p2pnode.colony.check_guest) before anything of it runs. If
  no peer has more room than we do, the child stays here.
* **Hostile members**: score and adopt take a bounded number of requests per
  peer (token buckets) and per source address (p2pnode.peers.ROUTE_RATES:
  fresh keys are free), and a peer's scoring or genome check waits for the
  agents' thread behind a few others at most (`COMPUTE_QUEUED`, else
  ``busy_compute``: the agents' say in an ask here never queues behind a
  flood, and the ask's encoder and index have a thread of their own); every
  route decodes its one wire shape with exact types and sizes (agents.guard), and
  refuses anything else with a typed reason counted as
  ``<route>_refused_<reason>``. A guest's standing is what this spore
  measured (p2pnode.colony), never what its lineage claims.
* **Registry**: every agent has a card in the gossiped map, signed by its
  host (fitness, interactions, specialty, alive), so every spore sees the
  whole population.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from agents.evolution import Scored, credits
from agents.genome import Agent
from agents.guard import (
    MAX_CANDIDATES,
    RID_BYTES,
    Rejected,
    Scoring,
    Scorings,
    decode_adoption,
    decode_feedback,
    decode_score_reply,
    decode_score_request,
    row_hashes,
    vectors,
)
from agents.pool import PoolError
from dht.guard import TokenBuckets
from p2pnode.colony import Birth, Colony, check_guest, compact_specialty, specialty_vector
from p2pnode.dna import Dna
from p2pnode.errors import VerifyError
from p2pnode.gossip import KIND_AGENT, KIND_PEER, GossipStore, agent_key
from p2pnode.identity import Identity, node_id
from p2pnode.peers import UNSPECIFIED, PeerService, Route
from p2pnode.records import AgentCard, decode_agent_card, decode_peer, make_agent_card

log = logging.getLogger("spore.agents")

SPECIALISTS = 2  # peers asked to score
SPECIALIST_MIN = 0.5  # cosine of a peer agent's specialty to the question, to be asked
CARD_UPDATE_S = 10.0  # an agent's card is re-sent at most this often for a new standing
CARDS_REFRESH_S = 2.0  # the specialists' cards are read again at most this often
SCORE_DEADLINE_S = 0.25
FEEDBACK_DEADLINE_S = 2.0
ADOPT_DEADLINE_S = 5.0
ANSWERS_KEPT = 4096  # answers whose participants we remember for a rating
SCORE_RATE = (20.0, 40.0)  # per peer: score requests a second, and at once
ADOPT_RATE = (0.1, 4.0)  # per peer: one adoption every 10 s, 4 at once
# Peers' jobs waiting for (or on) the agents' thread at once, by route (a
# scoring takes ~0.5 ms, a genome check 2-5 ms): the agents' say in an ask
# waits behind 40 ms of them at most. Honest placements come in bursts (learning.py: 23 of them
# refused with room for one).
COMPUTE_QUEUED = {"score": 8, "adopt": 8}
RATE_PEERS = 1024  # peers whose buckets are kept (the least recently heard go first)
BAD_CARDS_KEPT = 4096

Compute = Callable[..., Awaitable[Any]]  # runs fn(*args) on the agents' thread


@dataclass
class Verdict:
    """The agents' say on one ask: consensus per candidate and who took part."""

    consensus: np.ndarray  # [C]
    rows: list[tuple[bytes | None, bytes]] = field(default_factory=list)  # (host, agent)
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    remote_hosts: int = 0
    requests: dict[bytes, bytes] = field(default_factory=dict)  # host -> its score request id


@dataclass(frozen=True)
class _Cards:
    """The other spores' live agents' specialties, unit length, one row each."""

    seen: int  # the gossip store's count of agent card changes, when they were read
    built: float  # time.monotonic() then
    hosts: list[bytes]
    matrix: np.ndarray


@dataclass
class _Answer:
    q: np.ndarray
    memory: np.ndarray
    chosen: int  # the rated candidate's row in the scorings
    participants: list[tuple[bytes | None, bytes, float]]  # (host, agent, credit)
    requests: dict[bytes, bytes]  # host -> id of the score request it answered


def _f16(a: np.ndarray) -> bytes:
    return np.asarray(a, dtype=np.float16).tobytes()


class AgentNet:
    def __init__(self, *, colony: Colony, identity: Identity, swarm: bytes,
                 store: GossipStore, compute: Compute, dna: Callable[[], Dna],
                 clock: Callable[[], float] = time.monotonic,
                 peers: PeerService | None = None,
                 standing: Callable[[bytes], str | None] = lambda host: None) -> None:
        """`peers`: the transport to the other spores' agents (None: ours
        only); `standing`: whose agents count, members in good standing (a
        revoked host's die here: never asked to score, never given a child)."""
        self.colony, self.identity, self.swarm, self.gossip = colony, identity, swarm, store
        self.compute, self.dna = compute, dna
        self.clock = clock  # seconds: the peers' rate limits and the scorings' expiry
        self.peers, self.standing = peers, standing
        self.counters: dict[str, int] = {}
        self._answers: OrderedDict[str, _Answer] = OrderedDict()
        self._card_seq = 0
        self._cards = _Cards(-1, -CARDS_REFRESH_S, [], np.zeros((0, 0), np.float32))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stale: dict[bytes, Agent] = {}  # cards whose update waits (publish_cards)
        self._card_sent: dict[bytes, float] = {}  # agent id -> time.monotonic() of its card
        self._bad_cards: set[bytes] = set()  # gossip keys of cards ranking skipped (counted once)
        self.scorings = Scorings()
        self._queued = dict.fromkeys(COMPUTE_QUEUED, 0)  # peers' jobs queued for compute, by route
        # What a peer may ask of us; "place": what we offer a peer, within its limit.
        self._rates = {route: TokenBuckets(rate, burst, RATE_PEERS, clock)
                       for route, (rate, burst) in (("score", SCORE_RATE), ("adopt", ADOPT_RATE),
                                                    ("place", ADOPT_RATE))}
        self.routes: dict[str, Route] = {
            "score": self._counted("score", self._serve_score),
            "feedback": self._counted("feedback", self._serve_feedback),
            "adopt": self._counted("adopt", self._serve_adopt)}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _counted(self, route: str, serve: Route) -> Route:
        """`serve`, with each refusal counted here as <route>_refused_<reason>."""
        async def counted(sender: bytes, body: bytes) -> bytes:
            try:
                return await serve(sender, body)
            except VerifyError as exc:
                self.count(f"{route}_refused_{getattr(exc, 'reason', 'malformed')}")
                raise
        return counted

    def _peers_job(self, route: str, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """fn(*args) on the agents' thread for a peer, unless COMPUTE_QUEUED of
        this route's wait there already: then Rejected at once, not queued
        (asks come first)."""
        if self._queued[route] >= COMPUTE_QUEUED[route]:
            raise Rejected("busy_compute", f"busy with peers' {route} requests")
        self._queued[route] += 1
        return self._queued_job(route, fn, *args)

    async def _queued_job(self, route: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self.compute(fn, *args)
        finally:
            self._queued[route] -= 1

    def _take(self, route: str, sender: bytes) -> None:
        if not self._rates[route].take(sender.hex()):
            raise Rejected("rate_limited", f"too many {route} requests from this peer")

    def _cards_read(self) -> Iterator[tuple[AgentCard, np.ndarray]]:
        """The registry's cards and specialties; one that cannot be read is left
        out (counted once), the others still count."""
        for key, item in self.gossip.with_prefix(KIND_AGENT):
            try:
                card = decode_agent_card(item)
                yield card, specialty_vector(card.specialty)
            except (VerifyError, ValueError) as exc:
                if key not in self._bad_cards and len(self._bad_cards) < BAD_CARDS_KEPT:
                    self._bad_cards.add(key)
                    self.count("cards_skipped")
                    log.warning("skipping an agent card: %s", str(exc)[:200])

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def _rules(self) -> tuple[int, int, float]:
        f = self.dna().fields
        return (int(float(f["fitness_half_life_days"]) * 86_400_000),
                int(f["division_threshold"]), float(f["mutation_sigma"]))

    # --- life cycle ------------------------------------------------------------------

    async def start(self, peers: PeerService | None = None) -> None:
        """The colony loaded or seeded, our agents' cards published, and our
        routes (score, feedback, adopt) served by the peer service: the one
        given when built, or `peers` (a transport known only now). Whoever
        builds the peer service gives it the colony's guest room as the
        capacity its card advertises (p2pnode.daemon.assemble)."""
        if peers is not None:
            self.peers = peers
        _, _, sigma = self._rules()
        agents = await self.compute(self.colony.start, self._now_ms(), sigma)
        self.publish_cards(agents)
        self._spawn(self._flush_cards())
        if self.peers is not None:
            self.peers.routes.update(self.routes)

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
        for card, _ in self._cards_read():
            out.append({"id": card.agent_id.hex(), "host": node_id(card.host).hex(),
                        "generation": card.generation, "parent": card.parent.hex(),
                        "fitness": round(card.fitness, 4), "interactions": card.interactions,
                        "alive": card.alive, "here": card.host == self.identity.public_key})
        return out

    # --- scoring ---------------------------------------------------------------------

    def _specialists(self, q: np.ndarray) -> list[bytes]:
        """Hosts (public keys) whose live agents are the closest specialists for q:
        one matrix product over the others' cards (rebuilt when agent cards
        changed, at most every CARDS_REFRESH_S: ratings change them)."""
        seen, now = self.gossip.changes.get(KIND_AGENT, 0), time.monotonic()
        if seen != self._cards.seen and now - self._cards.built >= CARDS_REFRESH_S:
            hosts: list[bytes] = []
            vecs: list[np.ndarray] = []
            for card, v in self._cards_read():
                if card.alive and card.host != self.identity.public_key:
                    hosts.append(card.host)
                    vecs.append(v / (float(np.linalg.norm(v)) + 1e-9))
            matrix = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, len(q)),
                                                                              np.float32)
            self._cards = _Cards(seen, now, hosts, matrix)
        cards = self._cards
        if not cards.hosts:
            return []
        sims = cards.matrix @ q.astype(np.float32)
        best: dict[bytes, float] = {}
        for i in np.flatnonzero(sims >= SPECIALIST_MIN):
            host = cards.hosts[int(i)]
            if self.standing(host) is None:
                best[host] = max(best.get(host, -1.0), float(sims[i]))
        return sorted(best, key=lambda h: -best[h])[:SPECIALISTS]

    def _address(self, host: bytes) -> tuple[str, int] | None:
        item = self.gossip.get(KIND_PEER + node_id(host))
        if item is None:
            return None
        try:
            card = decode_peer(item)
        except VerifyError:
            return None
        if card.host in UNSPECIFIED or self.peers is None:
            return None
        members = {(m.host, m.port): m for m in self.peers.members.live()}
        return (card.host, card.port) if (card.host, card.port) in members else None

    async def rank(self, q: np.ndarray, vecs: np.ndarray) -> Verdict:
        """The consensus of our agents and of the specialists' who answered in time."""
        vecs = vecs[:MAX_CANDIDATES]
        hosts = self._specialists(q) if self.peers is not None else []
        rids = [os.urandom(RID_BYTES) for _ in hosts]
        local = asyncio.ensure_future(self._local_score(q, vecs))
        remote = await asyncio.gather(*[self._remote_score(h, rid, q, vecs)
                                        for h, rid in zip(hosts, rids, strict=True)])
        mine = await local
        rows: list[tuple[bytes | None, bytes]] = [(None, a) for a in mine.ids]
        scores, fitness = [mine.scores], [mine.fitness]
        requests: dict[bytes, bytes] = {}
        for host, rid, got in zip(hosts, rids, remote, strict=True):
            if got is None:
                continue
            requests[host] = rid
            rows.extend((host, a) for a in got.ids)
            scores.append(got.scores)
            fitness.append(got.fitness)
        all_scores = np.concatenate(scores) if rows else np.zeros((0, len(vecs)), np.float32)
        all_fit = np.concatenate(fitness) if rows else np.zeros(0, np.float32)
        verdict = Verdict(Scored(tuple(a for _, a in rows), all_fit, all_scores).consensus()
                          if rows else np.zeros(len(vecs), np.float32), rows, all_scores,
                          len(requests), requests)
        self.count("remote_scorers", len(requests))
        return verdict

    async def _local_score(self, q: np.ndarray, vecs: np.ndarray) -> Scored:
        try:
            return await self.compute(self.colony.score, q, vecs, self._now_ms())  # type: ignore[no-any-return]
        except (PoolError, ValueError) as exc:  # our pool failed: the peers' say stands
            self.count("local_score_failed")
            log.warning("our agents could not score: %s", exc)
            return Scored((), np.zeros(0, np.float32), np.zeros((0, len(vecs)), np.float32))

    async def _remote_score(self, host: bytes, rid: bytes, q: np.ndarray, vecs: np.ndarray
                            ) -> Scored | None:
        addr = self._address(host)
        if addr is None or self.peers is None:
            return None
        body = msgpack.packb([rid, _f16(q), _f16(vecs)], use_bin_type=True)
        try:
            reply = await self.peers.request(*addr, "score", body, SCORE_DEADLINE_S)
            return Scored(*decode_score_reply(reply, len(vecs)))
        except Exception as exc:  # a late, dead or lying peer: its say is left out
            self.count("remote_score_failed")
            log.debug("scoring at %s: %s", addr, exc)
            return None

    async def _serve_score(self, sender: bytes, body: bytes) -> bytes:
        """Our agents' scores for a peer's candidates, remembered for its rating."""
        self._take("score", sender)
        rid, q, vecs, raw = decode_score_request(body)
        self.scorings.check_new(sender, rid)
        got: Scored = await self._peers_job("score", self.colony.score, q, vecs,
                                            self._now_ms())
        scores = got.scores.astype(np.float16)
        self.scorings.add(sender, rid, Scoring(self.clock(), q, got.ids, scores,
                                                row_hashes(raw)))
        self.count("scored_for_peers")
        out: bytes = msgpack.packb([list(got.ids), got.fitness.astype(np.float32).tobytes(),
                                    scores.tobytes()], use_bin_type=True)
        return out

    # --- feedback --------------------------------------------------------------------

    def remember(self, answer_id: str, q: np.ndarray, memory: np.ndarray, verdict: Verdict,
                 chosen: int) -> None:
        if not verdict.rows or not 0 <= chosen < verdict.scores.shape[1]:
            return
        credit = credits(verdict.scores, chosen)
        self._answers[answer_id] = _Answer(
            q, memory, chosen,
            [(h, a, float(c)) for (h, a), c in zip(verdict.rows, credit, strict=True)],
            dict(verdict.requests))
        while len(self._answers) > ANSWERS_KEPT:
            self._answers.popitem(last=False)

    async def feedback(self, answer_id: str, up: bool) -> int:
        """Send a rating to every agent that took part; returns how many."""
        answer = self._answers.get(answer_id)
        if answer is None:
            return 0
        sign = 1.0 if up else -1.0
        mine = {agent: sign * credit for host, agent, credit in answer.participants
                if host is None}
        if mine:
            await self.apply_feedback(mine, answer.q, answer.memory, up)
        for host, rid in answer.requests.items():
            self._spawn(self._send_feedback(host, rid, answer, up))
        return len(answer.participants)

    async def _send_feedback(self, host: bytes, rid: bytes, answer: _Answer, up: bool) -> None:
        addr = self._address(host)
        if addr is None or self.peers is None:
            self.count("feedback_undeliverable")
            return
        body = msgpack.packb([rid, answer.chosen, up, _f16(answer.memory)], use_bin_type=True)
        try:
            await self.peers.request(*addr, "feedback", body, FEEDBACK_DEADLINE_S)
            self.count("feedback_sent")
        except Exception as exc:  # the host is gone: its agents miss one rating
            self.count("feedback_undeliverable")
            log.debug("feedback to %s: %s", addr, exc)

    async def _serve_feedback(self, sender: bytes, body: bytes) -> bytes:
        """A peer's rating of a scoring we did for it: each of our agents that
        took part is credited by its own scores (never by the peer's claim)."""
        rid, chosen, up, raw = decode_feedback(body)
        memory = vectors(raw, 1)[0]
        scoring = self.scorings.rate(sender, rid, chosen, raw, self.clock())
        sign = 1.0 if up else -1.0
        credit = credits(scoring.scores.astype(np.float32), chosen)
        deltas = {a: sign * float(c) for a, c in zip(scoring.ids, credit, strict=True)}
        await self.apply_feedback(deltas, scoring.q, memory, up)
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
            try:
                card = decode_peer(item)
            except VerifyError:
                continue
            if card.public_key == self.identity.public_key or (card.host, card.port) not in live:
                continue
            if self.standing(card.public_key) is not None:
                continue
            if best is None or card.capacity > best[2]:
                best = (card.host, card.port, card.capacity)
        return best

    async def place(self, birth: Birth) -> None:
        """A child goes to the roomiest live peer, or stays here."""
        target = self._roomiest_peer()
        if target is not None and target[2] > self.colony.spare and self.peers is not None \
                and self._rates["place"].take(f"{target[0]}:{target[1]}"):
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
        """A peer's child, if it is the sender's, born in the past, its genome
        passes the guard and it finds room within the guest caps. The guard's
        work is bounded by the rate limit, checked first."""
        self._take("adopt", sender)
        lineage_wire, genome, spec = decode_adoption(body)
        self.colony.admit(lineage_wire, sender, self._now_ms())
        check = self._peers_job("adopt", check_guest, lineage_wire, genome, spec)
        try:
            birth = await check
        except VerifyError as exc:
            self.count(f"genome_rejected_{getattr(exc, 'reason', 'lineage')}")
            log.warning("refused a peer's agent: %s", exc)
            raise
        kept, dead = await self.compute(self.colony.adopt, birth, self._now_ms(),
                                        node_id(sender).hex()[:16])
        self.publish_cards([birth.agent] if kept else [], dead)
        if not kept:
            raise Rejected("no_room", "no room for the agent here")
        self.count("guests_adopted")
        if self.peers is not None:
            self.peers.capacity_changed()
        return b""

    def status(self) -> dict[str, Any]:
        return {"agents": len(self.colony.agents), "spare": self.colony.spare,
                "counters": {**self.counters, **self.colony.counters}}


