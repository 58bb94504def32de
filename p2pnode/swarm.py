"""The spore's part in the swarm index: publish what it was taught, find what
it is asked, republish its own records, expire what nobody refreshes.

Wires `dht.server.SporeDHT` with the value rules of `dht.codec` and a
`dht.values.ValueStore` in the state directory. Only embeddings, signed
index entries and signed records travel: never a question's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dht import codec
from dht.guard import MAX_VALUE
from dht.index import sketch_planes
from dht.keys import bucket_key, bucket_keys, hyperplanes, table_codes
from dht.server import (
    Bind,
    DhtConfig,
    DhtError,
    NotEnoughReplicas,
    SporeDHT,
    ValueRules,
    bind_udp,
)
from dht.values import ValueStore
from p2pnode.dna import Dna
from p2pnode.errors import SporeError, VerifyError
from p2pnode.identity import Identity
from p2pnode.records import MemoryRecord

log = logging.getLogger("spore.swarm")
DHT_DB = "dht.sqlite3"
DECODED_CACHE = 2048  # bucket values remembered decoded (by digest)
RULES = ValueRules(validate=codec.validate_value, merge=codec.merge_values,
                   key_id=codec.dht_id, node_id=codec.node_dht_id)
# Keeping joined: a spore started before its peers (every spore at once at
# boot, the founder last) retries them instead of staying alone for good.
JOIN_CHECK_S = 2.0  # how often a joined spore looks at its (local) routing table
ALONE_WARN_EVERY_S = 60.0
GOSSIP_ADMIT_EVERY_S = 10.0  # live gossip peers missing from the table are tried this often
Addr = tuple[str, int]


@dataclass(frozen=True, kw_only=True)
class SwarmSettings:
    host: str = "0.0.0.0"
    port: int = 7151
    peers: tuple[tuple[str, int], ...] = ()
    listen: Mapping[str, Any] | None = None  # why `host` (p2pnode.config.dht_listen)
    republish_s: float = 3600.0
    max_contacts_per_ip: int = 4
    rate_per_s: float = 500.0  # requests per second from one source IP
    rpc_timeout_s: float = 1.5
    # Bucket keys looked up per question (home keys first), and remote
    # candidates whose content is fetched. At 24 and 8 the swarm's FAQ top-1 /
    # top-5 were 43-49 / 69-74 % against the single spore's 50.8 / 80.8 %; at
    # 48 and 12, 50.0-50.8 / 77.5-80.0 %, for ~2 ms more (scripts/bench/swarm.py).
    lookups_per_ask: int = 48
    fetch_per_ask: int = 12
    # With at most this many contacts every probe key is read and the content
    # of more candidates fetched: what costs is datagrams, one per holder for
    # all its keys, and there are few holders. The candidates are ranked by
    # their 384-bit sketches (cosine within ~0.07): on the FAQ (8 spores, ~160
    # candidates reached, 20 LSH seeds) the best 12 gave top-5 80.2 % (below
    # the full scan's 80.8 % on 12 seeds), the best 24 81.3 % (on 4 seeds);
    # top-1 50.6 / 50.7 % against 50.8 % (scripts/bench/fetch_budget.py).
    small_swarm: int = 16
    small_swarm_fetch: int = 24
    read_width: int = 1  # replicas an ask reads first (the others only for what they lack)


@dataclass
class Backoff:
    """Delays between bootstrap attempts: `first_s` doubling up to `cap_s`, each
    shortened by up to `jitter` of itself, so spores started together (a boot)
    do not retry in step."""

    rng: random.Random
    first_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 0.25
    failures: int = 0

    def next_s(self) -> float:
        step = min(self.cap_s, self.first_s * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return step * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.failures = 0


@dataclass
class JoinState:
    """What keeping joined knows, for its next round, `status()` and the log."""

    backoff: Backoff
    delay_s: float = 0.0  # until the next round
    next_at: float | None = None  # when the next bootstrap attempt is due (alone only)
    attempts: int = 0  # bootstrap attempts in all
    in_row: int = 0  # attempts since the table last had contacts
    last_answered: int | None = None
    tried: tuple[str, ...] = ()
    unresolved: dict[str, str] = field(default_factory=dict)
    gossip: int = 0  # live gossip peers (beyond the configured ones) at the last round
    joined: bool = False  # the table had contacts at the end of the last round
    ever_joined: bool = False
    alone_since: float | None = None
    warned_at: float = float("-inf")
    admit_at: float = float("-inf")  # when gossip peers the table lacks are tried next


@dataclass(frozen=True)
class Found:
    """A memory found in the swarm, verified, with its cosine to the question."""

    record: MemoryRecord
    cosine: float


@dataclass(frozen=True)
class Lookup:
    """What the bucket keys of a question held: verified index entries by
    memory id (every author's entry kept), and how many contents an ask may
    fetch in this swarm (0: alone, nothing to fetch)."""

    entries: dict[bytes, list[codec.IndexEntry]]
    fetch: int


@dataclass(frozen=True)
class Wanted:
    """A memory whose content to fetch, and the authors its index entries
    named (None: recalled by votes, not by an entry)."""

    memory_id: bytes
    authors: frozenset[bytes] | None = None


class Swarm:
    def __init__(self, *, identity: Identity, dna: Dna, state_dir: Path, dim: int,
                 settings: SwarmSettings, now_ms: Callable[[], int] | None = None,
                 bind: Bind = bind_udp, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None,
                 admit: Callable[[bytes], str | None] = lambda public_key: None) -> None:
        self.identity, self.dna, self.settings = identity, dna, settings
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._clock = clock
        self.join = JoinState(Backoff(rng or random.Random()))
        self.store = ValueStore(state_dir / DHT_DB)
        self.dht = SporeDHT(identity=identity, dna_hash=dna.swarm_id, store=self.store,
                            rules=replace(RULES, admit=admit),
                            config=DhtConfig(replicas=int(dna.fields["replication"]),
                                             max_contacts_per_ip=settings.max_contacts_per_ip,
                                             rate_per_s=settings.rate_per_s,
                                             rate_burst=2 * settings.rate_per_s,
                                             rpc_timeout_s=settings.rpc_timeout_s,
                                             republish_interval_s=settings.republish_s),
                            bind=bind)
        self.planes = hyperplanes(dna.lsh, dim)
        # Index entries carry 384 sign bits of random projections (SimHash), not
        # of the raw coordinates: embedding axes are correlated, so raw signs
        # rank candidates poorly.
        self.sketch = sketch_planes(dna.lsh.seed, codec.BITS_BYTES * 8, dim).reshape(-1, dim)
        self._decoded: OrderedDict[bytes, list[codec.IndexEntry]] = OrderedDict()
        # (memory id, author) -> whether this spore forgot it (p2pnode.forgetting):
        # never a candidate, whoever still serves it.
        self.gone: Callable[[bytes, bytes], bool] = lambda memory_id, author: False
        self.counters = {"published": 0, "unreplicated": 0, "remote_found": 0,
                         "remote_rejected": 0, "expired": 0, "bootstrap_attempts": 0,
                         "rejoins": 0}

    async def start(self) -> tuple[str, int]:
        """Bind, and make the first attempt to join (`keep_joined` makes the next)."""
        addr = await self.dht.start(self.settings.host, self.settings.port)
        if self.settings.peers:
            await self.join_round()
            log.info("DHT on udp %s:%d, %d of %d peers answered", *addr,
                     self.join.last_answered or 0, len(self.settings.peers))
        return addr

    # joining ---------------------------------------------------------------
    async def keep_joined(self, extra: Callable[[], Iterable[Addr]] = tuple, *,
                          sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """The service that keeps this spore in the DHT, until cancelled: while
        the routing table is empty and there are peers to join (configured, or
        live gossip peers from `extra`), bootstrap again with backoff; while
        joined, admit the gossip peers the table lacks."""
        while True:
            await self._until_round(sleep)
            await self.join_round(list(extra()))

    async def _until_round(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        """Wait out the delay of the last round, in steps of at most JOIN_CHECK_S,
        ending early when a peer reached us first (its log line and a lookup of
        our own id then come at once, not after up to a backoff cap)."""
        left = self.join.delay_s
        while left > 0 and (self.join.joined or not self.dht.contacts()):
            step = min(left, JOIN_CHECK_S)
            await sleep(step)
            left -= step

    async def join_round(self, extra: Sequence[Addr] = ()) -> float:
        """One round of keeping joined; returns (and keeps) the seconds until the next."""
        j = self.join
        j.gossip = len(set(extra) - set(self.settings.peers))
        had_contacts = bool(self.dht.contacts())
        was_joined = j.joined and had_contacts
        if had_contacts:
            if not was_joined:  # a peer reached us first: learn its neighbours too
                await self.dht.lookup(self.dht.node_id)
            await self._admit_missing(extra)
        elif targets := _targets(self.settings.peers, extra, self.dht.address):
            if j.joined:
                log.info("DHT routing table empty: joining again")
            await self._bootstrap(targets)
        j.joined = bool(self.dht.contacts())
        if j.joined and not was_joined:
            self._on_joined()
        return self._plan_next()

    def _plan_next(self) -> float:
        """The delay until the next round: a look at the table while joined (or
        with nobody to join), the next backoff step while alone."""
        j = self.join
        if j.joined or not self.alone():
            j.delay_s, j.next_at, j.alone_since = JOIN_CHECK_S, None, None
        else:
            j.delay_s = j.backoff.next_s()
            j.next_at = self._clock() + j.delay_s
            self._note_alone()
        return j.delay_s

    def alone(self) -> bool:
        """No DHT contact although there are peers to join (configured, or gossip's)."""
        return not self.dht.contacts() and bool(self.settings.peers or self.join.gossip)

    async def _bootstrap(self, targets: Sequence[Addr]) -> None:
        j = self.join
        j.attempts, j.in_row = j.attempts + 1, j.in_row + 1
        self._count("bootstrap_attempts")
        j.tried = tuple(f"{host}:{port}" for host, port in targets)
        addrs = await self._resolved(targets)
        try:
            j.last_answered = await self.dht.bootstrap(addrs)
        except SporeError as exc:  # DhtError among them: this attempt failed, the next may not
            j.last_answered = 0
            self._count("bootstrap_errors")
            log.debug("DHT bootstrap from %s: %s", ", ".join(j.tried), exc)

    async def _resolved(self, targets: Sequence[Addr]) -> list[Addr]:
        """The targets as (IP, port); a name that does not resolve (DNS not up
        yet at boot, a typo) is counted, kept for status, and tried next round."""
        out, self.join.unresolved = [], {}
        for host, port in targets:
            try:
                out.append(await self.dht.resolve(host, port))
            except DhtError as exc:
                self._count("bootstrap_unresolved")
                self.join.unresolved[f"{host}:{port}"] = str(exc)
        return out

    async def _admit_missing(self, extra: Sequence[Addr]) -> None:
        """Admit the live gossip peers the table lacks (spores that bootstrapped
        through one peer at the same moment learn of each other only so, until
        an hourly refresh), at most every GOSSIP_ADMIT_EVERY_S."""
        now = self._clock()
        if not extra or now < self.join.admit_at:
            return
        self.join.admit_at = now + GOSSIP_ADMIT_EVERY_S
        known = {(c.ip, c.port) for c in self.dht.contacts()}
        missing = [a for a in _targets((), extra, self.dht.address) if a not in known]
        if missing:
            self._count("gossip_admitted", await self.dht.admit(await self._resolved(missing)))

    def _on_joined(self) -> None:
        j = self.join
        if j.ever_joined:
            self._count("rejoins")
        log.info("DHT joined: %d contacts after %d attempts", len(self.dht.contacts()), j.in_row)
        j.ever_joined, j.in_row, j.warned_at = True, 0, float("-inf")
        j.backoff.reset()

    def _note_alone(self) -> None:
        """WARNING when it finds itself alone, again every ALONE_WARN_EVERY_S while so."""
        j, now = self.join, self._clock()
        if j.alone_since is None:
            j.alone_since = now
        elif now - j.warned_at < ALONE_WARN_EVERY_S:
            return
        j.warned_at = now
        unresolved = f", unresolved: {', '.join(j.unresolved)}" if j.unresolved else ""
        configured = ", ".join(f"{h}:{p}" for h, p in self.settings.peers) or "none"
        log.warning("DHT alone: no contacts although peers are configured (%s) or known by "
                    "gossip (%d more); %d bootstrap attempts in %.0f s, the last to %d "
                    "addresses: %d answered%s; next in %.1f s", configured, j.gossip, j.in_row,
                    now - j.alone_since, len(j.tried), j.last_answered or 0, unresolved,
                    j.delay_s)

    def _join_status(self) -> dict[str, Any]:
        j, now = self.join, self._clock()
        return {"peers": [f"{host}:{port}" for host, port in self.settings.peers],
                "gossip_peers": j.gossip, "attempts": j.attempts,
                "attempts_since_joined": j.in_row, "last_attempt_answered": j.last_answered,
                "last_tried": list(j.tried), "unresolved": dict(j.unresolved),
                "alone_for_s": None if j.alone_since is None else round(now - j.alone_since, 1),
                "next_retry_s": None if j.next_at is None else round(max(0.0, j.next_at - now), 1)}

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    async def stop(self) -> None:
        await self.dht.stop()
        self.store.close()

    # publishing -----------------------------------------------------------
    def values_for(self, rec: MemoryRecord) -> list[tuple[bytes, bytes]]:
        """(key, value) pairs that index one memory: its content, and an index
        entry under the home bucket of every LSH table. Votes are not in them:
        gossip carries every vote to every spore (p2pnode.regions ranks with
        them), so the entry's up/down stay 0 (its signed format keeps them)."""
        emb = rec.vector()
        out: list[tuple[bytes, bytes]] = []
        content = codec.encode_content(rec.wire)
        if len(content) <= MAX_VALUE:  # larger texts are found but kept by their author
            out.append((rec.id, content))
        entry = codec.encode_bucket([codec.make_entry(self.identity, rec.id, self.sketch @ emb,
                                                      0, 0, rec.created_ms)])
        codes = table_codes(emb, self.planes)
        seed = self.dna.lsh.seed
        out.extend((bucket_key(seed, t, int(c)), entry) for t, c in enumerate(codes))
        return out

    async def publish(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Put values; a spore alone publishes nothing (its own database has
        them; the republish loop publishes once peers appear), one short of
        replicas keeps them in its own share too."""
        if not self.dht.contacts():
            self.counters["alone"] = self.counters.get("alone", 0) + 1
            return 0
        done = 0
        for key, value in items:
            try:
                await self.dht.put(key, value)
                done += 1
            except NotEnoughReplicas:
                self.counters["unreplicated"] += 1
                self._keep_locally(key, value)
            except (DhtError, SporeError) as exc:
                log.warning("publishing %s…: %s", key.hex()[:12], exc)
        self.counters["published"] += done
        return done

    def _keep_locally(self, key: bytes, value: bytes) -> None:
        with contextlib.suppress(SporeError):
            self.store.put(key, value, self.dht.node_id, self._now_ms())

    # finding --------------------------------------------------------------
    # An ask reads the swarm in two stages with its own decision between them
    # (p2pnode.asking): `lookup` reads the bucket keys of the question and
    # returns the verified index entries; `worth_fetching` chooses, from them,
    # the memories whose content to fetch (given what is held here already
    # and what people rejected for this question); `fetch` gets and verifies
    # that content.

    async def lookup(self, q: np.ndarray) -> Lookup:
        """The verified index entries of the buckets near `q` (one datagram per
        holder), by memory id, with the fetch budget of this swarm's size.
        Alone: nothing (the local index has everything there is)."""
        contacts = len(self.dht.contacts())
        if not contacts:
            return Lookup({}, 0)
        small = contacts <= self.settings.small_swarm
        budget = None if small else self.settings.lookups_per_ask
        fetch = self.settings.small_swarm_fetch if small else self.settings.fetch_per_ask
        values = await self._get_many(bucket_keys(q, self.dna.lsh, self.planes, budget))
        # Every author's entry for a memory id is kept: a forger's entry for
        # another author's memory must not stand in for the author's own.
        entries: dict[bytes, list[codec.IndexEntry]] = {}
        for value in values.values():
            for e in self._entries(value):
                if self.gone(e.memory_id, e.author):
                    continue
                listed = entries.setdefault(e.memory_id, [])
                if all(x.author != e.author for x in listed):
                    listed.append(e)
        return Lookup(entries, fetch)

    def worth_fetching(self, q: np.ndarray, found: Lookup, limit: int, *,
                       held: Collection[bytes] = (), rejected: Collection[bytes] = (),
                       recalled: Sequence[bytes] = ()) -> list[Wanted]:
        """The memories whose content an ask fetches: of the entries found,
        those not `held` here, ranked by their sketches, the best
        max(`limit`, fetch budget) (`_fetch_order`). Memories people
        `rejected` for this question are not fetched: the budget goes to the
        next ones (after a down vote, try something else). The `recalled`
        ones (rated up for questions like it, anywhere in the swarm) are
        fetched too, whether or not the buckets led to them. Nothing while
        alone: what is not here is nowhere."""
        if not found.fetch:
            return []
        entries = {m: listed for m, listed in found.entries.items() if m not in held}
        skipped = [m for m in entries if m in rejected]
        for memory_id in skipped:
            del entries[memory_id]
        if skipped:
            self._count("skipped_rejected", len(skipped))
        best = [m for m, _ in self._fetch_order(q, entries, max(limit, found.fetch))]
        chosen = set(best)
        extra = [m for m in dict.fromkeys(recalled) if m not in held and m not in chosen]
        self._count("recalled", len(extra))
        return ([Wanted(m, frozenset(e.author for e in entries[m])) for m in best]
                + [Wanted(m) for m in extra])

    async def fetch(self, q: np.ndarray, wanted: Sequence[Wanted]) -> list[Found]:
        """The content of the `wanted` memories, verified (a record whose
        author is none its index entries named is refused), with its cosine."""
        if not wanted:
            return []
        contents = await self._get_many([w.memory_id for w in wanted])
        found = [self._content(w.memory_id, contents.get(w.memory_id), q, w.authors)
                 for w in wanted]
        out = [f for f in found if f is not None]
        self.counters["remote_found"] += len(out)
        return out

    def _fetch_order(self, q: np.ndarray, entries: dict[bytes, list[codec.IndexEntry]],
                     n: int) -> list[tuple[bytes, bytes]]:
        """The n memories whose content is worth fetching, as (id, author of the
        entry that ranked it): fewest differing sketch bits first (what
        codec.cosine_estimate ranks by), no author taking more than half of them
        while other authors' candidates wait (the sketch is the writer's claim:
        one key cannot take the budget; a lone author still fills it)."""
        qbits = int.from_bytes(codec.embedding_bits(self.sketch @ q), "big")

        def distance(e: codec.IndexEntry) -> int:
            return (qbits ^ int.from_bytes(e.bits, "big")).bit_count()
        ranked = sorted((min(listed, key=distance) for listed in entries.values()), key=distance)
        cap = max(1, n // 2)
        taken: dict[bytes, int] = {}
        first: list[codec.IndexEntry] = []
        waiting: list[codec.IndexEntry] = []
        for e in ranked:
            if len(first) == n:
                break
            if taken.get(e.author, 0) < cap:
                taken[e.author] = taken.get(e.author, 0) + 1
                first.append(e)
            else:
                waiting.append(e)
        chosen = first + waiting[: n - len(first)]
        left_out = len(waiting) - (len(chosen) - len(first))  # passed over for others
        if left_out:
            self.counters["fetch_author_capped"] = (
                self.counters.get("fetch_author_capped", 0) + left_out)
        return [(e.memory_id, e.author) for e in sorted(chosen, key=distance)]

    async def _get_many(self, keys: list[bytes]) -> dict[bytes, bytes | None]:
        try:
            return await self.dht.get_many(keys, width=self.settings.read_width)
        except (DhtError, SporeError) as exc:
            log.debug("DHT get of %d keys: %s", len(keys), exc)
            return {}

    def _content(self, memory_id: bytes, data: bytes | None, q: np.ndarray,
                 authors: Collection[bytes] | None = None) -> Found | None:
        """A fetched content value, verified: its key, signature and swarm (and
        an author one of its index entries named)."""
        if data is None:
            return None
        try:
            content = codec.decode_content(data, memory_id)
        except VerifyError:
            self.counters["remote_rejected"] += 1
            return None
        rec = content.memory
        if (authors is not None and rec.author not in authors) or rec.dna_hash != self.dna.swarm_id:
            self.counters["remote_rejected"] += 1
            return None
        if self.gone(rec.id, rec.author):
            self._count("remote_forgotten")
            return None
        # By the record's own (float16) embedding, as a spore that holds it
        # ranks it (p2pnode.node): adopting a memory moves no ranking.
        return Found(rec, float(rec.vector() @ q))

    async def locate(self, memory_id: bytes) -> list[tuple[str, str, int]]:
        return await self.dht.locate(memory_id)

    def refused(self) -> dict[str, str]:
        """Addresses whose DHT handshake we refused (another swarm, not a member…)."""
        protocol = self.dht.protocol
        return {} if protocol is None else {f"{h}:{p}": why for (h, p), why in
                                            protocol.refused.items()}

    def expel(self) -> int:
        """Drop the DHT contacts the swarm no longer admits (a revocation came)."""
        protocol = self.dht.protocol
        return 0 if protocol is None else protocol.expel()

    def status(self) -> dict[str, Any]:
        return {"dht_address": f"{self.dht.address[0]}:{self.dht.address[1]}",
                "listen": self.settings.listen,
                "contacts": len(self.dht.contacts()), "alone": self.alone(),
                "bootstrap": self._join_status(), "store": self.store.stats(),
                "counters": {**self.dht.counters, **self.counters}}

    def _entries(self, value: bytes | None) -> list[codec.IndexEntry]:
        """The verified entries of a bucket value (decoded once per distinct bytes)."""
        if value is None or value[:1] != codec.KIND_BUCKET:
            return []
        digest = hashlib.sha256(value).digest()
        entries = self._decoded.get(digest)
        if entries is None:
            try:
                entries = codec.decode_bucket(value)
            except VerifyError:
                entries = []
            self._decoded[digest] = entries
            if len(self._decoded) > DECODED_CACHE:
                self._decoded.popitem(last=False)
        else:
            self._decoded.move_to_end(digest)
        return entries

    def held_items(self) -> list[tuple[bytes, bytes]]:
        """What this spore holds for others: re-put each interval, so a value
        whose author died stays on 3 live holders while any holder lives."""
        out = []
        for key in self.store.keys():  # noqa: SIM118 (a ValueStore, not a dict)
            value = self.store.get(key)
            if value is not None:
                out.append((key, value))
        return out

    def expire(self) -> None:
        ttl = int(self.settings.republish_s * 2.5 * 1000)
        self.counters["expired"] += self.store.expire(self._now_ms(), ttl)


def _targets(peers: Iterable[Addr], extra: Iterable[Addr], me: Addr) -> list[Addr]:
    """Configured peers first, then gossip's; each once, never ourselves."""
    return [a for a in dict.fromkeys([*peers, *extra]) if a != me]
