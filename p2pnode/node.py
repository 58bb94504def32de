"""The spore's memory service: teach, ask, rate, list — the single-spore walk.

Three worker threads keep blocking work off the event loop: `compute` owns
the encoder and the in-memory index (so they need no locks), `db` owns the
SQLite storage, and `learn` trains the learner (agents.learner) every
asking.LEARN_EVERY new votes on copies, so no ask waits for it. Each request
makes at most a couple of hops. The event loop owns the one vote book
(p2pnode.regions.RegionIndex): every vote this spore knows, its own and
gossip's, by memory id, whoever holds the memory; it serves the ranking, the
recall and /v1/votes.

`ask` composes the stages of p2pnode.asking (embed, local candidates and the
swarm's index lookup at once, fetch, the agents' say, the pure ranking of
p2pnode.ranking, record: `recall`), then the routing and the answer in words
of p2pnode.generation; `rate` likewise (answer, vote, book, calibration,
agents; an answer in words rated up becomes a memory: `_rate_generated`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from agents import consensus, learner, trust
from agents.encoder import Encoder
from crdt.votes import Counter, fitness, record_vote
from dht import compact
from dht.index import LocalIndex
from p2pnode import answering, asking, ranking
from p2pnode import dna as dna_mod
from p2pnode.calibrator import FILE as CAL_FILE
from p2pnode.calibrator import Calibrator
from p2pnode.dna import Dna
from p2pnode.errors import BadRequest, NotFound, StateError, TooLarge, VerifyError
from p2pnode.forgetting import Forgetting
from p2pnode.generation import Asked, Generated, Generation, Recalled
from p2pnode.gossip import KIND_DNA, KIND_VOTE, Accepted, GossipStore, vote_key
from p2pnode.identity import Identity
from p2pnode.ranking import Candidate
from p2pnode.records import MemoryRecord, VoteRecord, decode_vote, make_memory, make_vote
from p2pnode.regions import RegionIndex, Said, region_key
from p2pnode.storage import FORGOTTEN_ROW, AnswerRow, Storage
from p2pnode.swarm import Found, Lookup, Swarm, Wanted

if TYPE_CHECKING:
    from p2pnode.agentnet import AgentNet
    from p2pnode.members import Members
    from p2pnode.membership import Roster
    from p2pnode.peers import PeerService
    from p2pnode.providers import Chain

T = TypeVar("T")
TRUST_EVERY_S = 5.0
QUESTIONS_KEPT = 4096  # asks whose text is kept (in memory) until rated: `export --rated`
log = logging.getLogger("spore.node")
Prepared = tuple[MemoryRecord, bytes, float]  # signed record, int8 embedding, its scale


@dataclass(frozen=True)
class TeachItem:
    text: str
    question: str = ""
    origin: str = "taught"


class Spore:
    def __init__(self, *, identity: Identity, dna: Dna, storage: Storage, encoder: Encoder,
                 max_text_bytes: int, clock: Callable[[], float] = time.time,
                 swarm: Swarm | None = None, gossip: GossipStore | None = None,
                 state_dir: Path | None = None, chain: list[Dna] | None = None,
                 members: Members | None = None, generator: Chain | None = None,
                 ungrounded: bool = False, peers: PeerService | None = None,
                 agents: AgentNet | None = None) -> None:
        self.identity, self.dna, self.storage, self.encoder = identity, dna, storage, encoder
        self.chain = chain or [dna]  # every version of the DNA, the first to ours
        self.members = members  # who is in the swarm (None: a spore on its own)
        self.swarm, self.gossip, self.state_dir = swarm, gossip, state_dir
        self.peers = peers  # signed HTTP to the other spores (None: no peer transport)
        # Every vote known, ours and gossip's, by memory id (the event loop's):
        # ranks local and swarm answers alike.
        self._book = RegionIndex(encoder.dim)
        self.agents = agents  # the colony among peers (None: no agents)
        self.judge = asking.AgentsRecord()  # whether the agents earned a say in the ranking
        # What the ratings taught beyond their own questions (agents.learner):
        # trained on its own thread every LEARN_EVERY new votes and at load.
        self.learnt = learner.NOTHING_LEARNT
        self._seen = asking.Seen()  # vectors of the memories asks ranked lately
        self._new_votes = 0
        self._learning: asyncio.Task[None] | None = None
        self._learn_after = 0.0  # monotonic: no training starts before (asking.LEARN_REST)
        self._learn_reminder: asyncio.TimerHandle | None = None
        self.calibration = Calibrator(None if state_dir is None else state_dir / CAL_FILE)
        self._background: set[asyncio.Task[Any]] = set()
        self.max_text_bytes = max_text_bytes
        self.clock = clock
        self.started = clock()
        self.dim = encoder.dim
        self.lsh = dna.lsh
        self.index = LocalIndex(self.lsh, self.dim)
        self._reader = storage.reader()  # used by the compute thread only
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="spore-compute")
        self._db = ThreadPoolExecutor(1, thread_name_prefix="spore-db")
        # The learner's training: seconds at its caps, so neither the loop nor
        # the compute thread (asks, agents' scoring) waits for it.
        self._learner = ThreadPoolExecutor(1, thread_name_prefix="spore-learn")
        # The agents' scoring, learning and division (p2pnode.agentnet): their
        # shadow ranking of an answer, started as the ask ends, kept the next
        # ask's encoder waiting behind it on the compute thread (a third of
        # the asks at 100,000 memories, scripts/bench/ask.py).
        self._agents = ThreadPoolExecutor(1, thread_name_prefix="spore-agents")
        self.counters = {"asks": 0, "teaches": 0, "votes": 0, "rejected": 0, "learnt": 0}
        # Each voice's weight (agents.trust), recomputed off the loop when
        # votes or members changed (keep_trust); empty: every voice weighs 1.
        self.trust: dict[bytes, float] = {}
        self._trust_due = False
        self._trust_now = asyncio.Event()  # a revocation: recompute at once
        # The text of the last asks, by answer id: a rating keeps it with its
        # memory (storage's `rated`, for `spore export --rated`). Never sent.
        self._questions: OrderedDict[str, str] = OrderedDict()
        self.forgetting = Forgetting(self)  # wires itself into gossip and the swarm
        # Answers in words (p2pnode.generation): `generator` is the provider
        # chain the daemon built (None: generation off); it closes it.
        self.generation = Generation(generator, ungrounded=ungrounded)

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def on_compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the compute thread (the encoder's and the index's)."""
        return await self._on(self._compute, fn, *args)

    async def on_agents(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the agents' thread (the colony's owner, p2pnode.colony)."""
        return await self._on(self._agents, fn, *args)

    async def on_db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the db thread (the storage's owner)."""
        return await self._on(self._db, fn, *args)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    now_ms = _now_ms

    async def load(self) -> None:
        """Rebuild the in-memory index and the vote book from storage."""
        await self.forgetting.load()  # before the index: what was forgotten stays out
        self._load_gossiped_votes()
        rows, matrix, scales = await self._on(self._db, self.storage.index_rows, self.dim)
        # Our own votes (and those an older version stored): gossip holds
        # them too, unless the spore runs without it.
        for v in await self._on(self._db, self.storage.all_votes):
            self._tally(v.memory, v.voter, v.region, v.qvec, v.counter)
        if len(rows):
            await self._on(self._compute, self.index.add_compact, rows, matrix, scales)
        await self._on(self._db, self.calibration.load)
        self._maybe_learn(at_least=1)

    def _load_gossiped_votes(self) -> None:
        """Tally every vote the gossip store holds. At load, not in __init__:
        the store validates its file at first use, with the daemon's current
        DNA, which it can read only once this Spore exists."""
        if self.gossip is None:
            return
        for _, item in self.gossip.with_prefix(KIND_VOTE):
            try:
                self._tally_vote(decode_vote(item, dim=self.dim))
            except VerifyError:
                self._count("votes_dropped")

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _tally_vote(self, v: VoteRecord) -> None:
        self._tally(v.memory_id, v.voter, v.region, v.qvec, Counter(v.seq, v.up, v.down),
                    v.author)

    def _tally(self, memory_id: bytes, voter: bytes, region: bytes, qvec: bytes,
               counter: Counter, author: bytes = b"") -> None:
        """Put a vote in the book. One whose question is no compact embedding
        of our dimension (a row of an older version) is dropped and counted:
        the spore starts anyway."""
        try:
            if self._book.put_compact(memory_id, (voter, region), qvec, counter, author=author):
                self._new_votes += 1
            self._trust_due = True
        except ValueError:
            self._count("votes_dropped")

    def check_text(self, text: str, what: str) -> str:
        text = text.strip()
        if not text:
            raise BadRequest(f"{what} is empty; give some text")
        size = len(text.encode())
        if size > self.max_text_bytes:
            raise TooLarge(f"{what} is {size} bytes; the limit is {self.max_text_bytes} bytes "
                           "(split it, or use `spore ingest` which chunks files)")
        return text

    # teach --------------------------------------------------------------
    async def teach(self, items: Sequence[TeachItem]) -> list[tuple[bytes, bool]]:
        """Embed, sign and durably store memories; returns (id, new) each."""
        clean = [TeachItem(self.check_text(i.text, "text"),
                           i.question.strip() and self.check_text(i.question, "question"),
                           i.origin[:1024]) for i in items]
        prepared = await self._on(self._compute, self._prepare, clean)
        stored = await self._on(self._db, self.storage.add_memories, prepared)
        fresh = [(k, row) for k, (row, _, new) in enumerate(stored) if new]
        if fresh:
            await self._on(self._compute, self._index_add, fresh, prepared)
            if self.swarm is not None:
                self._in_background(self._publish([prepared[k][0] for k, _ in fresh]))
        self.counters["teaches"] += len(fresh)
        return [(mid, new) for _, mid, new in stored]

    def _prepare(self, items: Sequence[TeachItem]) -> list[Prepared]:
        texts = [f"{i.question}\n{i.text}" if i.question else i.text for i in items]
        # Indexed as the record keeps it (float16), as a spore that adopts it does.
        embs = self.encoder.embed(texts).astype("<f2").astype(np.float32)
        codes, scales = compact.to_int8(embs)
        now = self._now_ms()
        out = []
        for i, item in enumerate(items):
            rec = make_memory(self.identity, question=item.question, answer=item.text,
                              embedding=embs[i], created_ms=now, origin=item.origin,
                              dna_hash=self.dna.swarm_id)
            out.append((rec, codes[i].tobytes(), float(scales[i])))
        return out

    def _index_add(self, fresh: list[tuple[int, int]], prepared: list[Prepared]) -> None:
        rows = np.asarray([row for _, row in fresh], dtype=np.int64)
        codes = np.stack([np.frombuffer(prepared[k][1], dtype=np.int8) for k, _ in fresh])
        scales = np.asarray([prepared[k][2] for k, _ in fresh], dtype=np.float32)
        self.index.add_compact(rows, codes, scales)

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish(self, records: list[MemoryRecord]) -> None:
        """Index freshly taught memories in the swarm (acknowledged already)."""
        assert self.swarm is not None
        for rec in records:
            await self.swarm.publish(self.swarm.values_for(rec))

    async def own_records(self) -> list[MemoryRecord]:
        """Every memory this spore authored (for republishing)."""
        return await self._on(self._db, self.storage.records_by_author, self.identity.public_key)

    # ask ----------------------------------------------------------------
    async def ask(self, question: str, top: int = 3, *, generate: bool | None = None,
                  ungrounded: bool | None = None) -> dict[str, Any]:
        """The ranking's answer, routed (memory, words, "I don't know"), then
        generated when routed to words (p2pnode.generation), as one JSON."""
        asked = await self.routed(question, top, generate=generate, ungrounded=ungrounded)
        return await self.generation.answer(asked)

    async def routed(self, question: str, top: int = 3, *, generate: bool | None = None,
                     ungrounded: bool | None = None) -> Asked:
        """`recall`, then where its answer comes from (p2pnode.answering):
        what the API streams from (`Generation.events`)."""
        may_generate = self.generation.chain is not None and generate is not False
        recalled = await self.recall(question, top, known_first=may_generate)
        return self.generation.route(recalled, generate=generate, ungrounded=ungrounded)

    async def recall(self, question: str, top: int = 3, *,
                     known_first: bool = False) -> Recalled:
        """The stages of p2pnode.asking, in order: each hands its values on.
        `known_first` (when the alternative is to generate): a memory rated up
        for this very question answers before any other (answering.known_first)."""
        top = max(1, min(top, asking.MAX_SOURCES))
        query, near = await self.on_compute(asking.embed_near, self.encoder, self.index,
                                            self._reader, self.check_text(question, "question"))
        said = self._book.said(query.vector, asking.RECALLED_MAX)  # what people said of it
        rejected = [m for m, f in said.fitness.items() if consensus.rejected(f)]
        # After a down vote, reach as much deeper as there are rejected.
        widen = min(len(rejected), asking.CANDIDATES)
        if rejected:  # reach deeper here while the swarm is asked, and see what was rejected
            near, found, _ = await asyncio.gather(
                self._deeper(query, asking.CANDIDATES + widen), self._lookup(query),
                self._see(query, rejected))
        else:
            found = await self._lookup(query)
        gone = self._rejected_vectors(rejected, near)
        local = self._local(query, said, near, gone, top + widen)
        remote = await self._fetch(query, found, said, top + widen, held=local, gone=gone)
        fetched = self._learnt(query, said, [asking.from_swarm(f) for f in remote], gone)
        cands = local + fetched
        self._seen.add(near)  # the local candidates are among them
        self._seen.add(fetched)
        say = await self.judge.consult(self.agents, query.vector, cands, bool(said.fitness))
        ranked = ranking.rank(cands, self._opinions(said, cands), say.consensus, say.weight)
        if known_first:
            ranked = answering.known_first(ranked, said.fitness)
        answer_id = secrets.token_hex(8)
        confidence = self._record(answer_id, query, ranked, say)
        if ranked:
            self._questions[answer_id] = question.strip()
            if len(self._questions) > QUESTIONS_KEPT:
                self._questions.popitem(last=False)
        # "I don't know": no answer nor confidence claimed; the sources are
        # the nearest memories, each a "maybe", still rated by `answer_id`.
        unknown = ranking.abstains(query.vector, ranked, ranking.Opinions(said.fitness),
                                   ranking.abstain_below(self.encoder.model_name))
        sources = [self._provenance(dict(ranking.with_score(s).candidate.source))
                   | ({"maybe": True} if unknown else {}) for s in ranked[:top]]
        self.counters["asks"] += 1
        if unknown:
            self._count("abstained")
        rated_up = bool(ranked) and said.fitness.get(ranked[0].candidate.memory_id, 0.0) > 0
        return Recalled({"answer_id": answer_id if sources else None,
                         "answer": sources[0]["text"] if sources and not unknown else None,
                         "abstained": unknown,
                         "confidence": round(confidence, 4) if sources and not unknown else 0.0,
                         "sources": sources, "agents_weight": say.weight,
                         "memories_searched": len(self.index)},
                        question.strip(), query.vector, rated_up)

    def _opinions(self, said: Said, cands: Sequence[Candidate]) -> ranking.Opinions:
        """What the book says of these candidates: votes travel by gossip to
        every spore, so a swarm answer is ranked with all of them too."""
        return ranking.Opinions(said.fitness,
                                {c.memory_id: self._book.overall(c.memory_id) for c in cands})

    def _local(self, query: asking.Query, said: Said, near: list[Candidate],
               gone: np.ndarray, top: int) -> list[Candidate]:
        """The best local candidates, by the learnt cosines: as many as the
        answer shows, or as the agents score (AGENT_CANDIDATES) when they run
        (`top` widened by the memories rejected for this question)."""
        keep = max(top, asking.AGENT_CANDIDATES if self.agents is not None else top)
        near = self._learnt(query, said, near, gone)
        return ranking.shortlist(near, self._opinions(said, near), keep)

    async def _see(self, query: asking.Query, rejected: Sequence[bytes]) -> None:
        """The rejected memories no ask here saw, fetched from the swarm (at
        most REJECTED_FETCH_MAX, verified by their content key) for their
        vectors alone: the next ask of a question moves away from what was
        rejected for it on whichever spore it is asked, not only where the
        vote was cast. Never candidates: they rank nowhere."""
        unseen = [m for m in rejected if m not in self._seen][:asking.REJECTED_FETCH_MAX]
        if self.swarm is None or not unseen:
            return
        fetched = await self.swarm.fetch(query.vector, [Wanted(m) for m in unseen])
        self._seen.add([asking.from_swarm(f) for f in fetched])

    def _rejected_vectors(self, rejected: Sequence[bytes], near: Sequence[Candidate]
                          ) -> np.ndarray:
        """The vectors of the memories rejected for this question that an ask
        here saw (or this one's local candidates hold), [k, dim]."""
        held = {c.memory_id: c.vector for c in near}
        vectors = [held[m] for m in rejected if m in held]
        vectors += self._seen.vectors([m for m in rejected if m not in held])
        return np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32)

    def _learnt(self, query: asking.Query, said: Said, cands: list[Candidate],
                gone: np.ndarray) -> list[Candidate]:
        """The learnt stage (p2pnode.ranking.learnt_cosines). The memories
        rated up for other questions are read only when the learner gave
        that a say. A failure costs the stage, never the ask."""
        if not cands or (not len(gone) and not self.learnt.lam and not self.learnt.mu):
            return cands
        ups = self._book.ups_on([c.memory_id for c in cands]) if self.learnt.mu else (
            np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64))
        try:
            return ranking.learnt_cosines(query.vector, cands, ranking.Opinions(said.fitness),
                                          rejected=gone, ups=ups, learnt=self.learnt)
        except ValueError as exc:
            self._count("learnt_failed")
            log.warning("the learnt stage was skipped: %s", exc)
            return cands

    def _maybe_learn(self, at_least: int | None = None) -> None:
        """Train the learner in the background when `at_least` votes came
        since the last training (and none is running: at most one at once),
        and not before the last one's rest is over (asking.LEARN_REST): a
        flood of votes gets a training now and then, never a busy core."""
        due = asking.LEARN_EVERY if at_least is None else at_least
        if self._new_votes < due or not (self._learning is None or self._learning.done()):
            return
        wait = self._learn_after - time.monotonic()
        if wait > 0:  # come back when the rest is over (one reminder at a time)
            if self._learn_reminder is None:
                def remind() -> None:
                    self._learn_reminder = None
                    self._maybe_learn(due)
                self._learn_reminder = asyncio.get_running_loop().call_later(wait, remind)
            return
        self._learning = asyncio.ensure_future(self._learn_in_background())
        self._background.add(self._learning)
        self._learning.add_done_callback(self._background.discard)

    async def _learn_in_background(self) -> None:
        started = time.monotonic()
        try:
            await self.learn()
        except Exception as exc:  # a failed training keeps what was learnt before
            self._count("learner_failed")
            log.warning("the learner's training failed: %s", exc)
        finally:
            ended = time.monotonic()
            self._learn_after = ended + asking.LEARN_REST * (ended - started)

    async def learn(self) -> None:
        """One training of the learner: the book's rated pairs read on the loop
        (the latest LIMITS.max_pairs), rows of the memories no ask here saw
        on the db thread, their vectors on the compute thread, the training
        on the learner's own thread."""
        self._new_votes = 0
        questions, ids, signs = self._book.rated_pairs(asking.LIMITS.max_pairs)
        if not ids:
            return
        seen = self._seen.snapshot()
        rows = await self._on(self._db, self._rows_of, [m for m in set(ids) if m not in seen])
        keep, answers = await self.on_compute(asking.training_set, ids, seen, rows, self.index)
        pool = np.stack(list(seen.values())).astype(np.float32) if seen else answers
        learnt, pairs = await self._on(self._learner, asking.learn, questions[keep], answers,
                                       signs[keep], pool)
        self.learnt = learnt
        self.counters["learnt"] += 1
        self.counters["learnt_pairs"] = pairs

    def _rows_of(self, memory_ids: Sequence[bytes]) -> dict[bytes, int]:
        """The storage rows of the memories held here (db thread)."""
        found = {m: self.storage.memory_by_id(m) for m in memory_ids}
        return {m: r.row for m, r in found.items() if r is not None}

    def learner_status(self) -> dict[str, Any]:
        learnt = self.learnt
        return {"lam": learnt.lam, "mu": learnt.mu,
                "trainings": self.counters["learnt"],
                "pairs": self.counters.get("learnt_pairs", 0),
                # What validation saw: held-out questions, those whose answer was
                # taken elsewhere, and how many each ranking put right.
                "held_out": learnt.held_out, "exposed": learnt.exposed,
                "held_out_right": {"cosine": learnt.validation.get((0.0, 0.0), 0),
                                   "learnt": learnt.validation.get((learnt.lam, learnt.mu), 0)}}

    async def _deeper(self, query: asking.Query, limit: int) -> list[Candidate]:
        """The nearest `limit` memories, searched again: after down votes the
        ask reaches as many deeper as there are rejected."""
        return await self.on_compute(asking.nearest, self.index, self._reader, query.vector,
                                     limit)

    async def _lookup(self, query: asking.Query) -> Lookup:
        if self.swarm is None:
            return Lookup({}, 0)
        return await self.swarm.lookup(query.vector)

    async def _fetch(self, query: asking.Query, found: Lookup, said: Said, top: int,
                     held: Sequence[Candidate], gone: np.ndarray) -> list[Found]:
        """The swarm's memories worth fetching: not among the local candidates,
        not rejected for this question (ordered by the question moved away
        from those, learner.feedback_query); those recalled by votes as well."""
        if self.swarm is None:
            return []
        rejected = {m for m, f in said.fitness.items() if consensus.rejected(f)}
        order_by = learner.feedback_query(query.vector, gone) if len(gone) else query.vector
        wanted = self.swarm.worth_fetching(order_by, found, top,
                                           held={c.memory_id for c in held},
                                           rejected=rejected, recalled=said.recalled)
        return await self.swarm.fetch(query.vector, wanted)

    def _record(self, answer_id: str, query: asking.Query, ranked: list[ranking.Scored],
                say: asking.Say) -> float:
        """The last stage: the answer's confidence kept for its rating (the
        ratings refit the calibration, p2pnode.calibrator), the memory it gave
        remembered (a swarm one adopted), the agents' part recorded."""
        if not ranked:
            return 0.0
        confidence = self.calibration.said(answer_id, *ranking.runner_up(ranked))
        best = ranked[0].candidate
        # Not awaited: the db thread runs jobs in order, so a `rate` of this
        # answer (queued later on the same thread) always finds it.
        if best.row is not None:
            self._db.submit(self._remember, answer_id, query.vector, best.row, best.memory_id)
        elif best.record is not None:
            self._db.submit(self._adopt, answer_id, query.vector, best.record)
        self.judge.judged(self.agents, answer_id, query.vector, ranked, say)
        return confidence

    def _provenance(self, source: dict[str, Any]) -> dict[str, Any]:
        """Who wrote a source, as the swarm sees it now: a revoked author's
        memories stay, marked; trust as the votes weigh it (agents.trust)."""
        if self.members is None or "author" not in source:
            return source
        author = bytes.fromhex(source["author"])
        standing = self.members.standing(author)
        source["author_membership"] = {
            "kind": self.members.roster.kind(author), "standing": standing or "member",
            "trust": round(self.trust.get(author, trust.FLOOR), 3) if self.trust else None}
        if standing in ("revoked", "revoked_inviter"):
            source["revoked_author"] = True
        return source

    def _adopt(self, answer_id: str, qr: np.ndarray, rec: MemoryRecord) -> None:
        """Keep a verified memory found in the swarm that answered here, so it
        can be rated (and found locally next time). Runs on the db thread."""
        emb = rec.vector()
        codes, scales = compact.to_int8(emb[None, :])
        [(row, mid, new)] = self.storage.add_memories([(rec, codes[0].tobytes(),
                                                        float(scales[0]))])
        if row == FORGOTTEN_ROW:
            return
        self._remember(answer_id, qr, row, mid)
        if new:  # the votes on it are in the book already (by memory id)
            self._compute.submit(self.index.add_compact, np.asarray([row], np.int64), codes,
                                 scales)

    def _remember(self, answer_id: str, qr: np.ndarray, row: int, memory_id: bytes) -> None:
        codes, scales = compact.to_int8(qr[None, :])
        qvec = compact.pack(codes[0], float(scales[0]))
        self.storage.put_answer(AnswerRow(answer_id, memory_id, row, region_key(qvec), qvec),
                                self._now_ms())

    # rate ---------------------------------------------------------------
    async def rate(self, answer_id: str, up: bool) -> dict[str, Any]:
        """answer → its memory's author → the next vote → the book (and
        gossip, or storage) → calibration → the agents' feedback."""
        spoken = self.generation.peek(answer_id)
        if spoken is not None:  # an answer in words: a memory once rated up
            return await self._rate_generated(answer_id, spoken, up)
        answer = await self._on(self._db, self.storage.answer, answer_id)
        if answer is None:
            raise NotFound(f"no answer with id {answer_id!r} (ids come from `spore ask`)")
        if self.forgetting.marked(answer.memory):
            raise NotFound(f"the memory of answer {answer_id!r} was forgotten")
        row = await self._on(self._db, self.storage.memory_by_id, answer.memory)
        vote = self._next_vote(answer, up, row.author if row is not None else b"")
        await self._cast(vote)
        self.counters["votes"] += 1
        if (question := self._questions.get(answer_id)) is not None:
            await self._on(self._db, self.storage.put_rated, answer_id, question, answer.memory,
                           up, self._now_ms())
        if self.calibration.rated(answer_id, up):
            self.calibration.refit()
            self._db.submit(self.calibration.save, self.calibration.snapshot())
        await self.judge.settled(answer_id)  # its shadow ranking, if still running
        agents = await self.agents.feedback(answer_id, up) if self.agents is not None else 0
        self.judge.rated(answer_id, up, answer.memory)
        _, ups, downs = self._book.voices(answer.memory)
        return {"memory_id": answer.memory.hex(), "vote": "up" if up else "down",
                "agents_rated": agents,
                "up": ups, "down": downs, "fitness": round(self._book.overall(answer.memory), 4)}

    async def _rate_generated(self, answer_id: str, spoken: Generated,
                              up: bool) -> dict[str, Any]:
        """A generated answer rated: down, it is dropped (nothing stored, no
        vote: the memories it cited were not what was rated); up, it becomes a
        memory of this spore's, published like any taught one, with an empty
        question (the question's text stays here: only the vote's compact
        embedding of it travels), and this spore's up vote on it for the
        question, so the next ask of it, here or anywhere the vote reaches,
        is answered from memory. The answer id then names that memory (a
        failure before leaves the answer kept, to be rated again)."""
        if not up:
            self.generation.take(answer_id)
            self._count("generated_down")
            return {"memory_id": None, "vote": "down", "generated": True, "stored": False,
                    "agents_rated": 0, "up": 0, "down": 0, "fitness": 0.0}
        [(memory_id, _)] = await self.teach([TeachItem(spoken.text, "", spoken.origin)])
        row = await self._on(self._db, self.storage.memory_by_id, memory_id)
        if row is None:  # forgotten here before (a tombstone): not stored again
            raise NotFound(f"the answer of {answer_id!r} was forgotten here; not stored")
        await self._on(self._db, self._remember, answer_id, spoken.words, row.row, memory_id)
        answer = await self._on(self._db, self.storage.answer, answer_id)
        assert answer is not None  # just remembered, on the same thread
        await self._cast(self._next_vote(answer, True, self.identity.public_key))
        self.generation.take(answer_id)  # the answer id names the memory from now on
        self.counters["votes"] += 1
        self._count("generated_stored")
        await self._on(self._db, self.storage.put_rated, answer_id, spoken.question, memory_id,
                       True, self._now_ms())
        _, ups, downs = self._book.voices(memory_id)
        return {"memory_id": memory_id.hex(), "vote": "up", "generated": True, "stored": True,
                "origin": spoken.origin, "agents_rated": 0, "up": ups, "down": downs,
                "fitness": round(self._book.overall(memory_id), 4)}

    def _next_vote(self, answer: AnswerRow, up: bool, author: bytes) -> VoteRecord:
        mine = self._book.counter(answer.memory, (self.identity.public_key, answer.region))
        counter = record_vote(mine, up)
        return make_vote(self.identity, memory_id=answer.memory, region=answer.region,
                         qvec=answer.qvec, up=counter.up, down=counter.down, seq=counter.seq,
                         author=author)

    async def _cast(self, vote: VoteRecord) -> None:
        """Our own vote, kept on disk once before it is acknowledged: by the
        gossip store, which offers it to every spore of the swarm (and keeps
        it in its file), or, when there is none or it refused the vote (its
        quota), by storage's votes table; then into the book, where it acts
        at once on this spore. Written once: the votes table held a second
        copy of every vote the gossip store holds (twice the disk writes per
        rating). Either commit is synced (synchronous=FULL) before the
        rating is acknowledged: it survives kill -9 and power loss."""
        key = vote_key(vote.memory_id, vote.voter, vote.region)
        if self.gossip is not None:
            self.gossip.offer({key: vote.wire}, durable=True)
        if self.gossip is None or self.gossip.get(key) != vote.wire:
            await self._on(self._db, self.storage.put_vote, vote)
        self._tally_vote(vote)
        self._maybe_learn()

    # gossip -------------------------------------------------------------
    async def on_gossip(self, accepted: list[Accepted]) -> None:
        """Apply what gossip brought: votes (into the book: the gossip store
        keeps them on disk) and a newer swarm DNA."""
        await self.forgetting.on_gossip(accepted)
        votes = [a.record for a in accepted if a.key[:1] == KIND_VOTE]
        for vote in votes:
            self._tally_vote(vote)
        self._maybe_learn()
        others = sum(v.voter != self.identity.public_key for v in votes)
        if others:
            self.counters["gossip_votes"] = self.counters.get("gossip_votes", 0) + others
        for a in accepted:
            if a.key == KIND_DNA:
                await self.adopt_chain(a.record)

    async def adopt_chain(self, chain: list[Dna]) -> None:
        """A chain of our swarm's DNA versions (verified link by link by the
        gossip store): its newest version replaces ours if it should."""
        try:
            newer = dna_mod.newest_from(self.dna, chain)
        except VerifyError as exc:
            self._count("dna_refused")
            log.warning("a gossiped DNA chain was not taken: %s", exc)
            return
        if newer is not None:
            await self.adopt_dna(newer, chain[:newer.version])

    async def adopt_dna(self, new: Dna, chain: list[Dna]) -> None:
        """A newer version of our swarm's DNA and the chain that leads to it."""
        if self.state_dir is not None:
            await self._on(self._db, dna_mod.save_chain, self.state_dir, chain)
            await self._on(self._db, dna_mod.save, self.state_dir, new)
        old, self.dna, self.chain = self.dna, new, chain
        if self.swarm is not None:
            self.swarm.dna = new
        if self.members is not None:
            self.members.dna_changed()
        log.info("swarm DNA version %d → %d (%s…), signed by founder %s…", old.version,
                 new.version, new.hash.hex()[:16], new.signer.hex()[:16])

    async def update_dna(self, changes: dict[str, Any]) -> dict[str, Any]:
        """A founder publishes a new DNA version; gossip takes it to every spore."""
        new = dna_mod.update(self.dna, self.identity, changes, self._now_ms())
        chain = dna_mod.extend(self.chain, new)
        if chain is None:  # our chain does not lead to our DNA: start it anew from here
            raise StateError("this spore's DNA chain is incomplete (dna-chain.bin); "
                             "restore it before publishing a new version")
        await self.adopt_dna(new, chain)
        if self.gossip is not None:
            self.gossip.offer({KIND_DNA: dna_mod.chain_wire(chain)})
        return new.show()

    # membership -------------------------------------------------------------
    def _roster(self) -> Members:
        if self.members is None:
            raise StateError("this spore runs without a swarm: no members to manage")
        return self.members

    async def invite(self, *, may_invite: bool, ttl_s: int) -> dict[str, Any]:
        return self._roster().invite(may_invite=may_invite, ttl_s=ttl_s)

    def members_list(self) -> list[dict[str, Any]]:
        """Every member known, with the trust its votes weigh (None while
        voices are not weighed: a swarm from before membership)."""
        rows = self._roster().members()
        for m in rows:
            m["trust"] = (round(self.trust.get(bytes.fromhex(m["key"]), trust.FLOOR), 3)
                          if self.trust else None)
        return rows

    async def revoke(self, target_hex: str, why: str) -> dict[str, Any]:
        return self._roster().revoke(target_hex, why)

    def on_revoked(self, key: bytes) -> None:
        """A member was revoked: drop it from the DHT and its voice, now."""
        log.warning("member %s… was revoked", key.hex()[:16])
        if self.swarm is not None:
            self.swarm.expel()
        self._trust_due = True
        self._trust_now.set()


    def trusted(self, voter: bytes) -> bool:
        """A voter whose votes take places from the members' share of the
        gossip store: a founder or invited member in good standing, or one
        established by trust; every voter in a swarm from before membership."""
        if self.members is None or not self.members.priced():
            return True
        if self.members.roster.kind(voter) in ("founder", "invited"):
            return self.members.standing(voter) is None
        return self.trust.get(voter, 0.0) >= trust.ESTABLISHED

    def weight(self, voter: bytes) -> float:
        """A voter's trust as last computed (FLOOR for one never seen)."""
        return self.trust.get(voter, trust.FLOOR)

    async def refresh_trust(self) -> None:
        """Weigh every voice again (agents.trust: a pure function of the
        gossiped items, run on the compute thread). A swarm from before
        membership (open, no puzzle) keeps one voice each."""
        self._trust_due = False
        if self.members is None or not self.members.priced():
            return
        # Copies taken on the loop (fast); the work, proportional to what
        # peers sent, on the compute thread.
        inputs, roster = self._book.trust_inputs(), self.members.roster.copy()
        weights = await self.on_compute(_weigh, roster, inputs, self._now_ms())
        self._book.set_trust(weights, default=trust.FLOOR, own=self.identity.public_key)
        self.trust = weights
        if self.gossip is not None:  # its low share evicts by these weights
            self.gossip.weights_version += 1

    async def keep_trust(self, every_s: float = TRUST_EVERY_S) -> None:
        """Recompute trust when votes or members changed, at most every
        `every_s`, and at once after a revocation (cancel to stop)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every_s):
                    await self._trust_now.wait()
            self._trust_now.clear()
            if self._trust_due:
                await self.refresh_trust()

    def votes_for(self, memory_id: bytes) -> dict[str, Any]:
        """A memory's votes as this spore knows them (gossip converges them)."""
        entries, up, down = self._book.voices(memory_id)
        w_up, w_down = self._book.weighed(memory_id)
        return {"memory_id": memory_id.hex(), "voters": entries, "up": up, "down": down,
                "weighed_up": round(w_up, 6), "weighed_down": round(w_down, 6),
                "fitness": round(self._book.overall(memory_id), 6)}

    # read ---------------------------------------------------------------
    async def memories(self, limit: int, offset: int) -> list[dict[str, Any]]:
        rows = await self._on(self._db, self.storage.list_memories, limit, offset)
        return [asking.memory_json(r) for r in rows]

    async def memory(self, memory_id: bytes) -> dict[str, Any]:
        row = await self._on(self._db, self.storage.memory_by_id, memory_id)
        if row is None:
            forgotten = " (it was forgotten)" if self.forgetting.marked(memory_id) else ""
            raise NotFound(f"no memory with id {memory_id.hex()}{forgotten}")
        out = asking.memory_json(row)
        _, up, down = self._book.voices(row.id)
        out.update(up=up, down=down, fitness=round(fitness(up, down), 4))
        return out

    async def status(self) -> dict[str, Any]:
        memories = await self._on(self._db, self.storage.count_memories)
        return {
            "node_id": self.identity.node_id.hex(),
            "public_key": self.identity.public_key.hex(),
            "swarm": self.dna.fields["swarm"],
            "dna_hash": self.dna.hash.hex(), "swarm_id": self.dna.swarm_id.hex(),
            "dna_version": self.dna.version,
            "encoder": self.dna.fields["encoder"]["name"],
            "memories": memories,
            "indexed": len(self.index),
            "votes": len(self._book),  # vote entries known (ours and gossip's)
            "uptime_s": round(self.clock() - self.started, 1),
            "counters": dict(self.counters),
            "rss_mb": _rss_mb(),
            "dht": self.swarm.status() if self.swarm is not None else None,
            "gossip": self.peers.status() if self.peers is not None else None,
            "members": self.members.status() if self.members is not None else None,
            "calibration": self.calibration.status(),
            "forgetting": self.forgetting.status(),
            "learner": self.learner_status(),
            "agents": None if self.agents is None else {**self.agents.status(),
                                                        **self.judge.status()},
            "generate": self.generation.status(),
        }

    async def drain(self) -> None:
        """Let background publishing finish (bounded by the caller's timeout)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def close(self) -> None:
        if self._learn_reminder is not None:
            self._learn_reminder.cancel()
        self._compute.shutdown(wait=True)
        self._agents.shutdown(wait=True)
        self._learner.shutdown(wait=True)
        self._db.submit(self.calibration.flush)  # its samples since the last save
        self._db.shutdown(wait=True)
        self._reader.close()


def _weigh(roster: Roster, votes: trust.Votes, now_ms: int) -> dict[bytes, float]:
    """Trust weights of every voice, from a snapshot of the roster."""
    members = {k: trust.Member(kind=roster.kind(k), since_ms=roster.since_ms(k) or 0,
                               revoked=roster.standing(k) in ("revoked", "revoked_inviter"))
               for k in roster.known()}
    return trust.weights(members, votes, now_ms)


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0
