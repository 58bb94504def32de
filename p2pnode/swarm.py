"""The spore's part in the swarm index: publish what it was taught, find what
it is asked, republish its own records, expire what nobody refreshes.

Wires `dht.server.SporeDHT` with the value rules of `dht.codec` and a
`dht.values.ValueStore` in the state directory. Only embeddings, signed
index entries and signed records travel: never a question's text.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dht import codec, compact
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


@dataclass(frozen=True, kw_only=True)
class SwarmSettings:
    host: str = "0.0.0.0"
    port: int = 7151
    peers: tuple[tuple[str, int], ...] = ()
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


@dataclass(frozen=True)
class Found:
    """A memory found in the swarm, verified, with its cosine to the question."""

    record: MemoryRecord
    cosine: float
    up: int
    down: int


class Swarm:
    def __init__(self, *, identity: Identity, dna: Dna, state_dir: Path, dim: int,
                 settings: SwarmSettings, now_ms: Callable[[], int] | None = None,
                 bind: Bind = bind_udp) -> None:
        self.identity, self.dna, self.settings = identity, dna, settings
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.store = ValueStore(state_dir / DHT_DB)
        self.dht = SporeDHT(identity=identity, dna_hash=dna.swarm_id, store=self.store, rules=RULES,
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
        self.counters = {"published": 0, "unreplicated": 0, "remote_found": 0,
                         "remote_rejected": 0, "expired": 0}

    async def start(self) -> tuple[str, int]:
        addr = await self.dht.start(self.settings.host, self.settings.port)
        if self.settings.peers:
            answered = await self.dht.bootstrap(self.settings.peers)
            log.info("DHT on udp %s:%d, %d of %d peers answered", *addr, answered,
                     len(self.settings.peers))
        return addr

    async def stop(self) -> None:
        await self.dht.stop()
        self.store.close()

    # publishing -----------------------------------------------------------
    def values_for(self, rec: MemoryRecord, up: int = 0, down: int = 0,
                   votes: Sequence[bytes] = ()) -> list[tuple[bytes, bytes]]:
        """(key, value) pairs that index one memory: its content, and an index
        entry under the home bucket of every LSH table."""
        emb = rec.vector()
        out: list[tuple[bytes, bytes]] = []
        content = codec.encode_content(rec.wire, list(votes))
        if len(content) <= MAX_VALUE:  # larger texts are found but kept by their author
            out.append((rec.id, content))
        entry = codec.encode_bucket([codec.make_entry(self.identity, rec.id, self.sketch @ emb,
                                                      up, down, rec.created_ms)])
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
    async def find(self, q: np.ndarray, exclude: Awaitable[set[bytes]], limit: int,
                   rejected: Callable[[bytes], bool] | None = None,
                   recalled: Sequence[bytes] = ()) -> list[Found]:
        """Memories of the swarm near `q`, verified: the bucket keys are read
        (one datagram per holder), the candidates ranked by their sketches,
        and the content of the best `fetch_per_ask` (`small_swarm_fetch` in a
        small swarm) not in `exclude` (awaited only then: the local search runs
        meanwhile) fetched and verified.
        Memories people `rejected` for questions like this one are not fetched:
        the budget goes to the next ones (after a down vote, try something else);
        the `recalled` ones (rated up for questions like it, anywhere in the
        swarm) are fetched too, whether or not the buckets led to them."""
        if not self.dht.contacts():
            with contextlib.suppress(Exception):
                await exclude
            return []  # alone: the local index has everything there is
        small = len(self.dht.contacts()) <= self.settings.small_swarm
        budget = None if small else self.settings.lookups_per_ask
        fetch = self.settings.small_swarm_fetch if small else self.settings.fetch_per_ask
        keys = bucket_keys(q, self.dna.lsh, self.planes, budget)
        values = await self._get_many(keys)
        entries: dict[bytes, codec.IndexEntry] = {}
        for value in values.values():
            for e in self._entries(value):
                entries.setdefault(e.memory_id, e)
        here = await exclude
        for memory_id in here & entries.keys():
            del entries[memory_id]
        if rejected is not None:
            for memory_id in [m for m in entries if rejected(m)]:
                del entries[memory_id]
                self.counters["skipped_rejected"] = self.counters.get("skipped_rejected", 0) + 1
        # Fewest differing sketch bits first (what codec.cosine_estimate ranks by).
        qbits = int.from_bytes(codec.embedding_bits(self.sketch @ q), "big")
        best = sorted(entries.values(),
                      key=lambda e: (qbits ^ int.from_bytes(e.bits, "big")).bit_count())
        best = best[: max(limit, fetch)]
        extra = [m for m in recalled if m not in here and m not in {e.memory_id for e in best}]
        contents = await self._get_many([e.memory_id for e in best] + extra)
        found = [self._content(e.memory_id, contents.get(e.memory_id), q, e.author)
                 for e in best]
        found += [self._content(m, contents.get(m), q) for m in extra]
        self.counters["recalled"] = self.counters.get("recalled", 0) + len(extra)
        out = [f for f in found if f is not None]
        self.counters["remote_found"] += len(out)
        return out

    async def _get_many(self, keys: list[bytes]) -> dict[bytes, bytes | None]:
        try:
            return await self.dht.get_many(keys, width=self.settings.read_width)
        except (DhtError, SporeError) as exc:
            log.debug("DHT get of %d keys: %s", len(keys), exc)
            return {}

    def _content(self, memory_id: bytes, data: bytes | None, q: np.ndarray,
                 author: bytes | None = None) -> Found | None:
        """A fetched content value, verified: its key, signature and swarm (and
        the author its index entry named)."""
        if data is None:
            return None
        try:
            content = codec.decode_content(data, memory_id)
        except VerifyError:
            self.counters["remote_rejected"] += 1
            return None
        rec = content.memory
        if (author is not None and rec.author != author) or rec.dna_hash != self.dna.swarm_id:
            self.counters["remote_rejected"] += 1
            return None
        up, down = content.tally()
        # Scored as a local index scores it (int8 of the record's embedding): a
        # memory's cosine is the same fetched or held, so adopting it moves no
        # ranking (a float cosine here differed by ~0.001 and flipped near-ties).
        codes, scales = compact.to_int8(rec.vector()[None, :])
        return Found(rec, float((codes[0].astype(np.float32) @ q) * scales[0]), up, down)

    async def locate(self, memory_id: bytes) -> list[tuple[str, str, int]]:
        return await self.dht.locate(memory_id)

    def status(self) -> dict[str, Any]:
        return {"dht_address": f"{self.dht.address[0]}:{self.dht.address[1]}",
                "contacts": len(self.dht.contacts()), "store": self.store.stats(),
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


