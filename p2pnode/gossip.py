"""Anti-entropy gossip: what every spore of the swarm ends up holding alike.

The replicated state is one map ``key -> signed item`` (DESIGN.md §5); the
key's first byte says what the item is:

* ``D``             the swarm DNA (one key; a newer version signed by a founder wins)
* ``P`` + node id   a spore's peer card (its seq wins)
* ``V`` + memory id + voter/region digest   a vote entry (its seq wins)
* ``A`` + host id + agent id   an agent registry card, signed by its host (its seq wins)

Each kind has a validator (signature, key, swarm) that yields the item's
stamp; merging keeps the higher (stamp, bytes), so the map is a join
semilattice of LWW registers and converges whatever the order, loss or
duplication of messages. Sync uses crdt.sync: the initiator sends its digest
(root + 64 bucket hashes: ~1 KiB, however many items), the other answers
"same" or the listing of the buckets that differ, and one delta both ways
moves only the items that differ — a push-pull round of at most two requests.

The exchange is transport-free (`exchange(store, call)`); the daemon calls
it over signed HTTP (p2pnode.peerapi), the benchmark in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdt import sync
from p2pnode.errors import StateError, VerifyError
from p2pnode.storage import connect_wal

log = logging.getLogger("spore.gossip")

KIND_DNA, KIND_PEER, KIND_VOTE, KIND_AGENT = b"D", b"P", b"V", b"A"
MAX_DELTA_BYTES = 512 * 1024  # items one delta carries (the rest: next round)
MAX_WANT = 1024  # keys one delta asks for
MAX_BODY = MAX_DELTA_BYTES + 64 * 1024  # any gossip request or reply

Validator = Callable[[bytes, bytes], tuple[int, Any]]  # (key, item) → (stamp, record)
Call = Callable[[str, bytes], Awaitable[bytes]]  # (route, body) → reply body


def vote_key(memory_id: bytes, voter: bytes, region: bytes) -> bytes:
    return KIND_VOTE + memory_id + hashlib.sha256(voter + region).digest()[:16]


def agent_key(host: bytes, agent_id: bytes) -> bytes:
    """A host's card for one agent: only that host can write under this key."""
    return KIND_AGENT + hashlib.sha256(host).digest() + agent_id


@dataclass(frozen=True)
class Accepted:
    """An item that changed this replica (new, or newer than what it held)."""

    key: bytes
    stamp: int
    record: Any


class GossipStore:
    """The replicated map, validated on the way in, kept in SQLite (WAL)."""

    def __init__(self, validators: Mapping[bytes, Validator], path: Path | None = None) -> None:
        self.validators = dict(validators)
        self.items: dict[bytes, tuple[int, bytes]] = {}
        self.hashes: dict[bytes, bytes] = {}
        self.counters: dict[str, int] = {}
        self.on_change: Callable[[], None] | None = None  # called when an offer changed it
        self._digest: sync.Digest | None = None
        # The map split by sync bucket, each bucket's hash cached until it changes:
        # a new item costs one bucket's hash, a listing reads only its buckets.
        self._members: list[dict[bytes, bytes]] = [{} for _ in range(sync.FANOUT)]
        self._bucket_hashes: list[bytes | None] = [None] * sync.FANOUT
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._open(path)

    def _open(self, path: Path) -> None:
        self._db = connect_wal(path, "CREATE TABLE IF NOT EXISTS items(key BLOB PRIMARY KEY,"
                               " stamp INTEGER NOT NULL, item BLOB NOT NULL)",
                               what="the gossip store (move it aside: peers send it again)")
        try:
            rows = self._db.execute("SELECT key, stamp, item FROM items").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot read the gossip store {path}: {exc}; move it aside "
                             "(peers send it again)") from exc
        for key, stamp, item in rows:  # our own file: validated when it came in
            self.items[key] = (stamp, item)
            self._set_hash(key, sync.item_hash(item))

    def _set_hash(self, key: bytes, hashed: bytes) -> None:
        bucket = sync.bucket_of(key)
        self.hashes[key] = self._members[bucket][key] = hashed
        self._bucket_hashes[bucket] = None
        self._digest = None

    def reindex(self) -> None:
        """Split `hashes` by bucket again (after it was assigned wholesale)."""
        self._members = [{} for _ in range(sync.FANOUT)]
        self._bucket_hashes = [None] * sync.FANOUT
        self._digest = None
        for key, hashed in self.hashes.items():
            self._members[sync.bucket_of(key)][key] = hashed

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # --- reading -------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        got = self.items.get(key)
        return None if got is None else got[1]

    def with_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        return [(k, item) for k, (_, item) in self.items.items() if k.startswith(prefix)]

    def digest(self) -> sync.Digest:
        if self._digest is None:
            for i, cached in enumerate(self._bucket_hashes):
                if cached is None:
                    self._bucket_hashes[i] = sync.bucket_hash(self._members[i])
            self._digest = sync.digest_of([h for h in self._bucket_hashes if h is not None])
        return self._digest

    # --- writing -------------------------------------------------------------------

    def offer(self, items: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]
              ) -> list[Accepted]:
        """Validate and merge items (ours or a peer's); returns what changed.
        An invalid item is refused and counted by reason, never stored."""
        pairs = items.items() if isinstance(items, Mapping) else items
        changed: list[Accepted] = []
        for key, item in pairs:
            validate = self.validators.get(key[:1])
            if validate is None:
                self.count("refused_unknown_kind")
                continue
            try:
                stamp, record = validate(key, item)
            except VerifyError as exc:
                self.count(f"refused_{_reason(exc)}")
                log.debug("gossip item %s… refused: %s", key.hex()[:16], exc)
                continue
            old = self.items.get(key)
            if old is not None and old >= (stamp, item):
                continue
            self.items[key] = (stamp, item)
            self._set_hash(key, sync.item_hash(item))
            changed.append(Accepted(key, stamp, record))
        if changed:
            if self.on_change is not None:
                self.on_change()
            self.count("accepted", len(changed))
            self._persist(changed)
        return changed

    def _persist(self, changed: list[Accepted]) -> None:
        if self._db is None:
            return
        rows = [(a.key, a.stamp, self.items[a.key][1]) for a in changed]
        try:
            with contextlib.closing(self._db.cursor()) as cur:
                cur.execute("BEGIN")
                cur.executemany("INSERT OR REPLACE INTO items(key, stamp, item) VALUES (?,?,?)",
                                rows)
                cur.execute("COMMIT")
        except sqlite3.DatabaseError as exc:  # kept in memory; peers hold it too
            self.count("persist_errors")
            log.error("gossip store: %s", exc)

    # --- the responder's half of a round ---------------------------------------------

    def answer_sync(self, body: bytes) -> bytes:
        """Their digest in; b"" if we are equal, else the differing buckets and
        our listing of them."""
        theirs = sync.decode_digest(body)
        differ = sync.differing(self.digest(), theirs)
        if not differ:
            return b""
        # As many differing buckets as one listing may hold; the rest next round.
        buckets: list[int] = []
        listed: dict[bytes, bytes] = {}
        for bucket in differ:
            more = self._members[bucket]
            if buckets and len(listed) + len(more) > sync.MAX_LISTING:
                self.count("listing_paged")
                break
            buckets.append(bucket)
            listed.update(itertools.islice(more.items(), sync.MAX_LISTING - len(listed)))
        return sync.pack([buckets, sync.encode_listing(listed)])

    def answer_delta(self, body: bytes) -> tuple[bytes, list[Accepted]]:
        """Their items and wanted keys in; our wanted items out."""
        items, want = _decode_delta(body)
        accepted = self.offer(items)
        return sync.encode_delta(self.page(want)), accepted

    def page(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        size = 0
        for key in keys:
            item = self.get(key)
            if item is None:
                continue
            if size + len(item) > MAX_DELTA_BYTES or len(out) >= sync.MAX_DELTA_ITEMS:
                self.count("paged")
                break
            out[key], size = item, size + len(item)
        return out


def _decode_delta(body: bytes) -> tuple[dict[bytes, bytes], list[bytes]]:
    raw = sync.as_list(sync.unpack(body, MAX_BODY, "delta request"), "delta request", 2, 2)
    items = sync.decode_delta(sync.as_bytes(raw[0], "delta items", MAX_BODY))
    want = [sync.as_bytes(k, "wanted key", sync.MAX_KEY_BYTES, 1)
            for k in sync.as_list(raw[1], "wanted keys", MAX_WANT)]
    return items, want


def _reason(exc: Exception) -> str:
    words = "".join(c if c.isalnum() else " " for c in str(exc).lower()).split()
    return "_".join(words[:3]) or "invalid"


@dataclass
class RoundStats:
    same: bool = False
    sent: int = 0  # items pushed
    received: int = 0  # items pulled
    accepted: list[Accepted] = field(default_factory=list)


async def exchange(store: GossipStore, call: Call) -> RoundStats:
    """One push-pull round with one peer, as the initiator."""
    stats = RoundStats()
    reply = await call("sync", sync.encode_digest(store.digest()))
    if not reply:
        stats.same = True
        return stats
    raw = sync.as_list(sync.unpack(reply, MAX_BODY, "sync reply"), "sync reply", 2, 2)
    buckets = [sync.as_int(b, "bucket", 0, sync.FANOUT - 1)
               for b in sync.as_list(raw[0], "buckets", sync.FANOUT)]
    theirs = sync.decode_listing(sync.as_bytes(raw[1], "listing", MAX_BODY))
    send, want = sync.plan(sync.listing(store.hashes, buckets), theirs)
    push = store.page(send)
    stats.sent = len(push)
    body = sync.pack([sync.encode_delta(push), want[:MAX_WANT]])
    pulled = sync.decode_delta(await call("delta", body))
    stats.received = len(pulled)
    wanted = set(want)
    stats.accepted = store.offer({k: v for k, v in pulled.items() if k in wanted})
    return stats


# --- membership ----------------------------------------------------------------------

SUSPECT_AFTER, DROP_AFTER = 2, 4  # failed rounds in a row
PROBE_EVERY = 5  # a dropped peer is tried again one round in this many


@dataclass
class Member:
    """What this spore knows of one gossip peer (by address)."""

    host: str
    port: int
    failures: int = 0
    last_ok_s: float | None = None
    refused: str | None = None  # why it refused us, or we it (another swarm…)

    @property
    def state(self) -> str:
        if self.refused is not None:
            return "refused"
        if self.failures >= DROP_AFTER:
            return "dropped"
        if self.failures >= SUSPECT_AFTER:
            return "suspect"
        return "alive" if self.last_ok_s is not None else "unknown"


class Membership:
    """Gossip targets: seeds, DHT contacts and peer cards; alive ones first."""

    def __init__(self, me: tuple[str, int], rng: random.Random) -> None:
        self.me, self.rng = me, rng
        self.members: dict[tuple[str, int], Member] = {}
        self.rounds = 0

    def know(self, host: str, port: int) -> Member:
        addr = (host, port)
        member = self.members.get(addr)
        if member is None:
            member = self.members[addr] = Member(host, port)
        return member

    def pick(self, exclude: Container[tuple[str, int]] = ()) -> Member | None:
        """A random peer to gossip with: alive, unknown or suspect ones; one
        round in PROBE_EVERY, a dropped or refusing one (so it is re-admitted
        when back, or once its exchanges verify again)."""
        self.rounds += 1
        usable = [m for m in self.members.values() if (m.host, m.port) != self.me
                  and (m.host, m.port) not in exclude]
        live = [m for m in usable if m.state not in ("dropped", "refused")]
        # A refusal is probed like a drop: it lasts until an exchange verifies.
        dropped = [m for m in usable if m.state in ("dropped", "refused")]
        if dropped and (not live or self.rounds % PROBE_EVERY == 0):
            return self.rng.choice(dropped)
        return self.rng.choice(live) if live else None

    def ok(self, member: Member, now_s: float) -> None:
        if member.failures >= DROP_AFTER or member.refused is not None:
            log.info("gossip peer %s:%d is back", member.host, member.port)
        member.failures, member.last_ok_s, member.refused = 0, now_s, None

    def failed(self, member: Member, why: str) -> None:
        member.failures += 1
        if member.failures == SUSPECT_AFTER:
            log.info("gossip peer %s:%d suspected: %s", member.host, member.port, why)
        elif member.failures == DROP_AFTER:
            log.warning("gossip peer %s:%d dropped from gossip and fan-out: %s",
                        member.host, member.port, why)

    def live(self) -> list[Member]:
        return [m for m in self.members.values()
                if m.state in ("alive", "suspect") and (m.host, m.port) != self.me]

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"host": m.host, "port": m.port, "state": m.state, "failures": m.failures,
                 "last_ok_s": m.last_ok_s, "reason": m.refused}
                for m in sorted(self.members.values(), key=lambda m: (m.host, m.port))
                if (m.host, m.port) != self.me]
