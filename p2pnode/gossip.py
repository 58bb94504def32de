"""Anti-entropy gossip: what every spore of the swarm ends up holding alike.

The replicated state is one map ``key -> signed item`` (DESIGN.md §5); the
key's first byte says what the item is:

* ``D``             the swarm DNA (one key; a newer version signed by a founder wins)
* ``P`` + node id   a spore's peer card (its seq wins)
* ``V`` + memory id + voter/region digest   a vote entry (its seq wins)
* ``A`` + host id + agent id   an agent registry card, signed by its host (its seq wins)
* ``M`` + member key   a member's pass: its certificate chain or its puzzle ticket
* ``R`` + target key   a founder's revocation of a member
* ``F`` + memory id + author digest   an author's tombstone (p2pnode.forgetting)

Each kind has a validator (every field, signature, key, swarm: p2pnode.peers
`validators`) that yields the item's stamp; each kind and writer has a
quota (`Caps`); a refusal is counted by its reason. Merging keeps the
higher (stamp, bytes), so the map is a join
semilattice of LWW registers and converges whatever the order, loss or
duplication of messages. Sync uses crdt.sync: the initiator sends its digest
(root + 64 bucket hashes: ~1 KiB, however many items), the other answers
"same" or the listing of the buckets that differ, and one delta both ways
moves only the items that differ — a push-pull round of at most two requests.

The exchange is transport-free (`exchange(store, call)`); the daemon calls
it over signed HTTP (p2pnode.peerapi), the benchmark in-process.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import random
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdt import sync
from p2pnode.errors import SporeError, StateError, VerifyError
from p2pnode.membership import KIND_PASS as KIND_PASS
from p2pnode.membership import KIND_REVOKE as KIND_REVOKE
from p2pnode.records import MAX_INT, AgentCard, PeerRecord, RecordError, Tombstone, VoteRecord
from p2pnode.storage import connect_wal, transaction

log = logging.getLogger("spore.gossip")

KIND_DNA, KIND_PEER, KIND_VOTE, KIND_AGENT, KIND_FORGET = b"D", b"P", b"V", b"A", b"F"
_LOW_SHARES = (b"Vl", b"Al", b"Pl", b"Fl")  # the quota groups of writers not trusted yet
# Who may write is decided by the DNA, revocations and passes: in a batch they
# are judged first, so a new member's pass admits its votes in the same delta.
_FIRST = {KIND_DNA: 0, KIND_REVOKE: 1, KIND_PASS: 2}
MAX_DELTA_BYTES = 512 * 1024  # items one delta carries (the rest: next round)
MAX_WANT = 1024  # keys one delta asks for
MAX_BODY = MAX_DELTA_BYTES + 64 * 1024  # any gossip request or reply
NO_ROOM_S = 60.0  # an item refused for want of room is refused by its hash this long
NO_ROOM_KEPT = 65_536  # such hashes remembered (32 B each)

# (key, item, now in ms) → (stamp, record); raises VerifyError (with a `reason`)
Validator = Callable[[bytes, bytes, int], tuple[int, Any]]
Call = Callable[[str, bytes], Awaitable[bytes]]  # (route, body) → reply body


def vote_key(memory_id: bytes, voter: bytes, region: bytes) -> bytes:
    return KIND_VOTE + memory_id + hashlib.sha256(voter + region).digest()[:16]


def forget_key(memory_id: bytes, author: bytes) -> bytes:
    """An author's tombstone of a memory: only that author writes under it, so
    nobody's tombstone (for a memory not theirs) takes the author's place."""
    return KIND_FORGET + memory_id + hashlib.sha256(author).digest()[:16]


def agent_key(host: bytes, agent_id: bytes) -> bytes:
    """A host's card for one agent: only that host can write under this key."""
    return KIND_AGENT + hashlib.sha256(host).digest() + agent_id


@dataclass(frozen=True)
class Accepted:
    """An item that changed this replica (new, or newer than what it held)."""

    key: bytes
    stamp: int
    record: Any


@dataclass(frozen=True, kw_only=True)
class Caps:
    """What a store holds at most, per writer and per kind (DESIGN.md 5b). A
    full group refuses new keys (counted as ``refused_quota``) and evicts
    nothing, so no writer wins a place by what it claims; a writer's newer
    item under a key already held always replaces its older one. A vote flood
    cannot crowd out peer cards or agent cards: each kind has its own total.

    Budget at these caps, measured (tests/test_gossip_hostile.py): a vote is
    ~600 bytes on the wire, ~1.35 KB of RAM here (item, hash, dict entries,
    quota entry of a fresh voter) and ~0.9 KB of the SQLite file; the spore's
    tallies of it (p2pnode.regions: a float32 row of its question, its int8
    codes) take ~2.9 KB more. So 32,768 votes: ~45 MB here + ~95 MB of
    tallies, ~29 MB on disk. Agent and peer cards (~1 KB each held) add
    ~12 MB at most."""

    votes: int = 32_768
    votes_per_voter: int = 4096
    votes_per_memory: int = 4096
    # A dead agent's card stays (a tombstone), so an honest host adds one key
    # per birth: ~375 in 2,000 rated asks of learning.py (8 spores). At 64 a
    # host, every spore refused the others' new agents within minutes.
    agent_cards: int = 16_384
    agent_cards_per_host: int = 4096
    peer_cards: int = 4096
    # Voters the swarm does not trust yet (agents.trust: below ESTABLISHED;
    # an open swarm's new identities) share a quarter of the votes, and each
    # holds few: a thousand puzzle-paying keys cannot fill the store that
    # members' votes need (scripts/bench/sybil.py filled it in ~64 s before).
    low_votes: int = 8192
    low_votes_per_voter: int = 256
    low_cards: int = 1024  # agent cards, and peer cards, of hosts not trusted yet
    # A pass costs an invitation or a puzzle; revocations are the founders' alone.
    passes: int = 16_384
    revocations: int = 4096
    # Tombstones (~200 bytes each), kept for good; writers not trusted yet
    # share a quarter, few each, as votes do.
    tombstones: int = 32_768
    tombstones_per_author: int = 8192
    low_tombstones: int = 8192
    low_tombstones_per_author: int = 256

    @property
    def items(self) -> int:
        return (self.votes + self.agent_cards + self.peer_cards + self.passes
                + self.revocations + self.tombstones + 1)  # and the DNA


class GossipStore:
    """The replicated map, validated on the way in, kept in SQLite (WAL).

    What the file holds is validated again when it is first used (validators
    may need what the daemon wires after the store: its current DNA): an item
    that fails now — written by an older version, or by hand — is dropped from
    the file and counted (``dropped_on_load_<reason>``), and the spore starts.
    """

    def __init__(self, validators: Mapping[bytes, Validator], path: Path | None = None, *,
                 caps: Caps = Caps(), clock: Callable[[], float] = time.time,
                 trusted: Callable[[bytes], bool] = lambda voter: True,
                 weight: Callable[[bytes], float] = lambda voter: 0.0) -> None:
        self.validators = dict(validators)
        self.caps, self.clock = caps, clock
        self.items: dict[bytes, tuple[int, bytes]] = {}
        self.hashes: dict[bytes, bytes] = {}
        self.counters: dict[str, int] = {}
        self.on_change: Callable[[], None] | None = None  # called when an offer changed it
        # Whether a voter is trusted (p2pnode.node: a member, or established
        # by trust); the others' votes take places from Caps.low_votes.
        self.trusted = trusted
        self._no_room: OrderedDict[bytes, float] = OrderedDict()  # item hash → when refused
        self.rng = random.Random()  # which keys a round sends and wants when not all fit
        self._digest: sync.Digest | None = None
        # The map split by sync bucket, each bucket's hash cached until it changes:
        # a new item costs one bucket's hash, a listing reads only its buckets.
        self._members: list[dict[bytes, bytes]] = [{} for _ in range(sync.FANOUT)]
        self._bucket_hashes: list[bytes | None] = [None] * sync.FANOUT
        # Each item's entry hash (sync's), by bucket: a bucket's hash is
        # recomputed from these (a sort and one hash), not an entry hash per
        # item each time (at 20k items, ~20 ms of the loop per digest).
        self._entries: list[dict[bytes, bytes]] = [{} for _ in range(sync.FANOUT)]
        # Keys by kind (their first byte), and how often each kind changed:
        # reading the peer cards costs the cards, not a pass over every vote a
        # flood brought, and a reader learns of new cards without a digest.
        self._kinds: dict[bytes, dict[bytes, None]] = {}
        self.changes: dict[bytes, int] = {}
        self._held: dict[bytes, int] = {}  # quota group → keys held in it
        # The low share's votes by voter, for eviction: a vote of a voter the
        # swarm trusts more (`weight`, agents.trust via the daemon) takes the
        # place of one of the least trusted voter's, never of an equal's.
        self.weight = weight
        self.weights_version = 0  # the owner bumps it when `weight` changed
        # The low share's votes: key -> (voter, item hash, quota groups), and a
        # heap of them worst first (see _make_room), rebuilt when weights change.
        self._low: dict[bytes, tuple[bytes, bytes, list[tuple[bytes, int]]]] = {}
        self._low_heap: list[tuple[float, bytes, bytes]] = []
        self._low_of: dict[bytes, set[bytes]] = {}  # voter -> its keys in the low share
        self._low_heap_version = -1
        self._evicted: list[bytes] = []
        self._unchecked: list[tuple[int, object, object]] = []  # rows read, not validated
        self._db: sqlite3.Connection | None = None
        self._path = path
        if path is not None:
            self._open(path)

    def _open(self, path: Path) -> None:
        self._db = connect_wal(path, "CREATE TABLE IF NOT EXISTS items(key BLOB PRIMARY KEY,"
                               " stamp INTEGER NOT NULL, item BLOB NOT NULL)",
                               what="the gossip store (move it aside: peers send it again)")
        try:
            self._unchecked = self._db.execute("SELECT rowid, key, item FROM items").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot read the gossip store {path}: {exc}; move it aside "
                             "(peers send it again)") from exc

    def _check_loaded(self) -> None:
        """Admit the rows read from the file as an offer would (quotas too)."""
        if not self._unchecked:
            return
        rows, self._unchecked = self._unchecked, []
        rows.sort(key=lambda row: _FIRST.get(bytes(row[1][:1]), 3)
                  if isinstance(row[1], bytes) else 3)
        now_ms = self._now_ms()
        dropped: list[tuple[int]] = []
        for rowid, key, item in rows:
            try:
                if not isinstance(key, bytes) or not isinstance(item, bytes):
                    raise RecordError("record_malformed", "a stored row is not bytes")
                stamp, record = self._judge(key, item, now_ms)
                self._take_place(key, record, sync.item_hash(item), loading=True)
            except VerifyError as exc:
                self.count("dropped_on_load")
                self.count(f"dropped_on_load_{_reason(exc)}")
                dropped.append((rowid,))
                continue
            self.items[key] = (stamp, item)
            self._set_hash(key, sync.item_hash(item))
        if dropped:
            log.warning("gossip store: dropped %d stored items that do not validate (see "
                        "gossip.counters dropped_on_load_*)", len(dropped))
            self._write("DELETE FROM items WHERE rowid=?", dropped)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _set_hash(self, key: bytes, hashed: bytes) -> None:
        bucket = sync.bucket_of(key)
        self.hashes[key] = self._members[bucket][key] = hashed
        self._entries[bucket][key] = _entry_hash(key, hashed)
        self._kinds.setdefault(key[:1], {})[key] = None
        self.changes[key[:1]] = self.changes.get(key[:1], 0) + 1
        self._bucket_hashes[bucket] = None
        self._digest = None

    def reindex(self) -> None:
        """Split `hashes` by bucket again (after it was assigned wholesale)."""
        self._members = [{} for _ in range(sync.FANOUT)]
        self._entries = [{} for _ in range(sync.FANOUT)]
        self._bucket_hashes = [None] * sync.FANOUT
        self._kinds = {}
        self._digest = None
        for key, hashed in self.hashes.items():
            bucket = sync.bucket_of(key)
            self._members[bucket][key] = hashed
            self._entries[bucket][key] = _entry_hash(key, hashed)
            self._kinds.setdefault(key[:1], {})[key] = None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # --- reading -------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        self._check_loaded()
        got = self.items.get(key)
        return None if got is None else got[1]

    def with_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        self._check_loaded()
        of_kind = self._kinds.get(prefix[:1], {}) if prefix else self.items
        return [(k, self.items[k][1]) for k in of_kind if k.startswith(prefix)]

    def listing(self, buckets: Iterable[int]) -> dict[bytes, bytes]:
        """``key -> item hash`` of the items in `buckets` (sync.listing, read
        from the buckets themselves: no pass over every item)."""
        self._check_loaded()
        return {k: h for b in set(buckets) for k, h in self._members[b].items()}

    def digest(self) -> sync.Digest:
        self._check_loaded()
        if self._digest is None:
            for i, cached in enumerate(self._bucket_hashes):
                if cached is None:
                    self._bucket_hashes[i] = _bucket_hash(self._entries[i].values())
            self._digest = sync.digest_of([h for h in self._bucket_hashes if h is not None])
        return self._digest

    # --- writing -------------------------------------------------------------------

    def offer(self, items: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
              *, durable: bool = False) -> list[Accepted]:
        """Validate and merge items (ours or a peer's); returns what changed.
        An invalid item, or a new key over its group's cap, is refused and
        counted by reason (``refused_<reason>``), never stored; the others of
        the batch are taken all the same. `durable` (our own vote, about to
        be acknowledged): committed with synchronous=FULL, so it survives
        power loss too, and a failed write raises (SporeError) instead of
        being counted: what peers sent comes back from them, ours would not."""
        self._check_loaded()
        pairs = sorted(items.items() if isinstance(items, Mapping) else items,
                       key=lambda pair: _FIRST.get(pair[0][:1], 3))
        now_ms = self._now_ms()
        changed: list[Accepted] = []
        for key, item in pairs:
            hashed = sync.item_hash(item)
            if self._no_room.get(hashed, -NO_ROOM_S) > now_ms / 1000 - NO_ROOM_S:
                self.count("refused_quota_again")  # no second signature check
                continue
            try:
                old = self.items.get(key)
                if old is None and self._full(self._groups(key)):  # before any signature
                    raise RecordError("quota", "the item's group is full")
                stamp, record = self._judge(key, item, now_ms)
                if old is not None and old >= (stamp, item):
                    continue
                if old is None:
                    self._take_place(key, record, hashed)
                elif key in self._low:  # a low-share vote's newer item: its new rank
                    self._rerank(key, hashed)
            except VerifyError as exc:
                reason = _reason(exc)
                self.count(f"refused_{reason}")
                if reason == "quota":
                    self._remember_no_room(hashed, now_ms / 1000)
                log.debug("gossip item %s… refused: %s", key[:8].hex(), exc)
                continue
            self.items[key] = (stamp, item)
            self._set_hash(key, hashed)
            changed.append(Accepted(key, stamp, record))
        if self._evicted:
            self._write("DELETE FROM items WHERE key=?", [(k,) for k in self._evicted])
            self._evicted = []
            changed = [a for a in changed if a.key in self.items]  # not evicted since
        if changed:
            if self.on_change is not None:
                self.on_change()
            self.count("accepted", len(changed))
            self._persist(changed, durable)
        return changed

    def worth_wanting(self, theirs: Mapping[bytes, bytes], keys: Iterable[bytes],
                      most: int) -> list[bytes]:
        """Of `keys` (a peer's listing has them, ours lacks or differs), the
        ones worth a place in a delta request, at most `most`: never an item
        refused lately for want of room (while the two stores' caps differ
        it is listed every round and would take the places of the rest), a
        random order, so none waits behind others for good (key order kept a
        flood's keys ahead of a member's vote)."""
        now_s = self.clock()
        keys = [k for k in keys
                if self._no_room.get(theirs.get(k, b""), -NO_ROOM_S) <= now_s - NO_ROOM_S]
        # The reply is a page (sync.MAX_DELTA_ITEMS, MAX_DELTA_BYTES) of them
        # in the order asked: random, but passes, revocations and the DNA first.
        keys = self.rng.sample(keys, min(most, len(keys)))
        return sorted(keys, key=lambda k: _FIRST.get(k[:1], 3))

    def to_send(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """A page of the items under `keys` for a peer (pushed, or asked for):
        the DNA, revocations and passes first, then the others before the
        votes of voters not trusted when they came (Caps.low_votes), each
        kind in random order: the peer may refuse the same ones each round,
        and in key order the others would never go."""
        order = list(keys)
        self.rng.shuffle(order)
        order.sort(key=lambda k: (_FIRST.get(k[:1], 3), k in self._low))
        return self.page(order)

    def work_in(self, items: Mapping[bytes, bytes]) -> int:
        """How many of `items` an offer would check (the others: held as
        they are, or refused for want of room by their hash)."""
        self._check_loaded()
        now_s = self.clock()
        return sum(1 for key, item in items.items()
                   if (held := self.items.get(key)) is None or held[1] != item
                   if self._no_room.get(sync.item_hash(item), -NO_ROOM_S) <= now_s - NO_ROOM_S)

    def _remember_no_room(self, hashed: bytes, now_s: float) -> None:
        """A peer whose store took what ours had no room for offers it again
        every round (the digests differ): for NO_ROOM_S it is refused again
        by its hash alone, not by a signature check per round."""
        self._no_room.pop(hashed, None)
        self._no_room[hashed] = now_s
        if len(self._no_room) > NO_ROOM_KEPT:
            self._no_room.popitem(last=False)

    def _judge(self, key: bytes, item: bytes, now_ms: int) -> tuple[int, Any]:
        """(stamp, record) of an item, or VerifyError whose reason says why not."""
        validate = self.validators.get(key[:1])
        if validate is None:
            raise RecordError("unknown_kind", "no item kind has this key's first byte")
        stamp, record = validate(key, item, now_ms)
        if type(stamp) is not int or not 0 <= stamp <= MAX_INT:
            raise RecordError("stamp_range", "the item's stamp is out of [0, 2**63)")
        return stamp, record

    def _groups(self, key: bytes, record: Any = None) -> list[tuple[bytes, int]]:
        """The quota groups a new key takes a place in, with their caps: those
        its key names, and with its (validated) record, its writer's."""
        kind, caps = key[:1], self.caps
        if kind == KIND_VOTE:  # key = V ‖ memory id ‖ digest(voter, region)
            groups = [(kind, caps.votes), (b"Vm" + key[1:33], caps.votes_per_memory)]
            if isinstance(record, VoteRecord):
                if self.trusted(record.voter):
                    groups.append((b"Vv" + record.voter, caps.votes_per_voter))
                else:
                    groups += [(b"Vl", caps.low_votes),
                               (b"Vv" + record.voter, caps.low_votes_per_voter)]
            return groups
        if kind == KIND_AGENT:  # key = A ‖ sha256(host) ‖ agent id
            groups = [(kind, caps.agent_cards), (b"Ah" + key[1:33], caps.agent_cards_per_host)]
            if isinstance(record, AgentCard) and not self.trusted(record.host):
                groups.append((b"Al", caps.low_cards))
            return groups
        if kind == KIND_PEER:
            groups = [(kind, caps.peer_cards)]
            if isinstance(record, PeerRecord) and not self.trusted(record.public_key):
                groups.append((b"Pl", caps.low_cards))
            return groups
        if kind == KIND_FORGET:  # key = F ‖ memory id ‖ digest(author)
            groups = [(kind, caps.tombstones)]
            if isinstance(record, Tombstone):
                if self.trusted(record.author):
                    groups.append((b"Fa" + record.author, caps.tombstones_per_author))
                else:
                    groups += [(b"Fl", caps.low_tombstones),
                               (b"Fa" + record.author, caps.low_tombstones_per_author)]
            return groups
        if kind == KIND_PASS:
            return [(kind, caps.passes)]
        if kind == KIND_REVOKE:
            return [(kind, caps.revocations)]
        return []  # the DNA: its one key; unknown kinds are refused by validation

    def _full(self, groups: list[tuple[bytes, int]]) -> bool:
        return any(self._held.get(group, 0) >= cap for group, cap in groups)

    def _take_place(self, key: bytes, record: Any, hashed: bytes, *,
                    loading: bool = False) -> None:
        """Count a new key in its groups, or RecordError("quota") if one is
        full (at load, the low shares are not enforced: who is trusted is
        known only once the votes are in)."""
        groups = self._groups(key, record)
        full = [g for g, cap in groups if self._held.get(g, 0) >= cap
                and not (loading and g in _LOW_SHARES)]
        if full and not (isinstance(record, VoteRecord) and key not in self._low
                         and self._make_low_room(full, record.voter, hashed)):
            raise RecordError("quota", "the item's group is full")
        for group, _ in groups:
            self._held[group] = self._held.get(group, 0) + 1
        if isinstance(record, VoteRecord) and any(g == b"Vl" for g, _ in groups):
            self._low[key] = (record.voter, hashed, groups)
            self._low_of.setdefault(record.voter, set()).add(key)
            if self._low_heap_version == self.weights_version:
                heapq.heappush(self._low_heap, self._rank(key, record.voter, hashed))

    def _rerank(self, key: bytes, hashed: bytes) -> None:
        voter, _, groups = self._low[key]
        self._low[key] = (voter, hashed, groups)
        if self._low_heap_version == self.weights_version:
            heapq.heappush(self._low_heap, self._rank(key, voter, hashed))

    def _rank(self, key: bytes, voter: bytes, hashed: bytes) -> tuple[float, bytes, bytes]:
        """A low-share vote's place, worst first: less trusted, then the higher
        item hash (bytes inverted, so the heap pops the highest first)."""
        return self.weight(voter), bytes(255 - b for b in hashed), key

    def _make_low_room(self, full: list[bytes], voter: bytes, hashed: bytes) -> bool:
        """Room in the low share for a vote (its groups in `full` are full):
        if the voter's own share is full, in place of its own vote of the
        highest item hash, if the new one's is lower; else in place of the
        worst of the share (_make_room). Nothing else makes room."""
        own = b"Vv" + voter
        if not set(full) <= {b"Vl", own}:
            return False
        if own not in full:
            return self._make_room(voter, hashed)
        keys = self._low_of.get(voter)
        if not keys:
            return False
        worst = max(keys, key=lambda k: self._low[k][1])
        if self.weight(voter) > 0 or self._low[worst][1] <= hashed:
            return False  # (its votes are all as trusted: item hash decides at 0 only)
        self._forget_low(worst)
        return True

    def _forget_low(self, key: bytes) -> None:
        """Evict a low-share vote; offered again, it is refused by its hash."""
        voter, hashed, groups = self._low.pop(key)
        self._remember_no_room(hashed, self.clock())
        mine = self._low_of[voter]
        mine.discard(key)
        if not mine:
            del self._low_of[voter]
        self._drop(key, groups)

    def _make_room(self, voter: bytes, hashed: bytes) -> bool:
        """Evict the worst low-share vote if the new one ranks better: more
        trusted, or, between votes that weigh nothing (trust 0: voters who
        went against what the swarm settled), the lower item hash. Among those
        a total order on the items themselves, so two stores offered the same
        flood in any order keep the same votes: their digests meet and rounds
        end (first come, first kept, they differed for good, and every round
        listed and offered the difference again). Between equals that weigh
        something, the vote held stays: a fresh key (FLOOR) never pushes out
        an honest newcomer's vote by grinding its hash."""
        if self._low_heap_version != self.weights_version:
            self._low_heap = [self._rank(k, v, h) for k, (v, h, _) in self._low.items()]
            heapq.heapify(self._low_heap)
            self._low_heap_version = self.weights_version
        mine = self._rank(b"", voter, hashed)
        while self._low_heap:
            worst = self._low_heap[0]
            held = self._low.get(worst[2])
            if held is None or held[1] != bytes(255 - b for b in worst[1]):
                heapq.heappop(self._low_heap)  # evicted or replaced since
                continue
            if not _better(mine, worst):
                return False
            heapq.heappop(self._low_heap)
            self._forget_low(worst[2])
            return True
        return False

    def _drop(self, key: bytes, groups: list[tuple[bytes, int]]) -> None:
        """Forget a held item (evicted): map, hashes, digest, quota places."""
        del self.items[key], self.hashes[key]
        bucket = sync.bucket_of(key)
        self._members[bucket].pop(key, None)
        self._entries[bucket].pop(key, None)
        self._bucket_hashes[bucket] = None
        self._digest = None
        self._kinds.get(key[:1], {}).pop(key, None)
        for group, _ in groups:
            self._held[group] -= 1
        self._evicted.append(key)
        self.count("evicted_low_trust")

    def _persist(self, changed: list[Accepted], durable: bool = False) -> None:
        """Write what changed in one transaction. A newer item for a key held
        is updated in place: its row keeps its rowid, so only its leaf page
        changes (INSERT OR REPLACE deleted it and appended a new row: the old
        leaf, the last leaf and the key's index page, 3 WAL frames for each
        re-rating; footprint.py: 13.5 -> 7.3 KiB of gossip WAL per rating, and
        it beat a WITHOUT ROWID table, 9.7, whose ~600-byte rows made a deep
        tree that split often)."""
        self._write("INSERT INTO items(key, stamp, item) VALUES (?,?,?) ON CONFLICT(key)"
                    " DO UPDATE SET stamp=excluded.stamp, item=excluded.item",
                    [(a.key, a.stamp, self.items[a.key][1]) for a in changed], durable)

    def _write(self, sql: str, rows: list[tuple[Any, ...]], durable: bool = False) -> None:
        """One transaction; on any error it is rolled back (the next write
        works) and counted: what it carried stays in memory, peers hold it
        too. A `durable` one is synced to the disk (FULL) and raises."""
        if self._db is None or self._path is None:
            return
        try:
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                with transaction(self._db, self._path, "the gossip store") as con:
                    con.executemany(sql, rows)
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
        except (SporeError, OverflowError, ValueError, TypeError, sqlite3.Error) as exc:
            self.count("persist_errors")
            log.error("gossip store: %s", exc)
            if durable:
                raise

    # --- the responder's half of a round ---------------------------------------------

    def answer_sync(self, body: bytes) -> bytes:
        """Their digest in; b"" if we are equal, else the differing buckets and
        our listing of them."""
        theirs = sync.decode_digest(body)
        differ = sync.differing(self.digest(), theirs)
        if not differ:
            return b""
        # As many differing buckets as one listing may hold, in random order:
        # in bucket order, stores that differ for good (a refused flood in
        # every bucket) listed the same first ~30 of 64 every round, and the
        # votes in the others never went (scripts/bench/sybil.py: each spore
        # held a third of the other members' votes, their trust stayed low).
        buckets: list[int] = []
        listed: dict[bytes, bytes] = {}
        self.rng.shuffle(differ)
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
        return self.answer_items(*decode_delta_request(body))

    def answer_items(self, items: Mapping[bytes, bytes], want: Iterable[bytes]
                     ) -> tuple[bytes, list[Accepted]]:
        """`answer_delta` of a request decoded already (decode_delta_request)."""
        accepted = self.offer(items)
        return sync.encode_delta(self.to_send(want)), accepted

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


def decode_delta_request(body: bytes) -> tuple[dict[bytes, bytes], list[bytes]]:
    """A delta request's items and wanted keys (sync.DecodeError if malformed)."""
    raw = sync.as_list(sync.unpack(body, MAX_BODY, "delta request"), "delta request", 2, 2)
    items = sync.decode_delta(sync.as_bytes(raw[0], "delta items", MAX_BODY))
    want = [sync.as_bytes(k, "wanted key", sync.MAX_KEY_BYTES, 1)
            for k in sync.as_list(raw[1], "wanted keys", MAX_WANT)]
    return items, want


def _better(new: tuple[float, bytes, bytes], held: tuple[float, bytes, bytes]) -> bool:
    """Whether a low-share vote ranked `new` takes the place of one ranked
    `held` (GossipStore._rank): more trusted, or both at 0 and a lower hash."""
    return new[0] > held[0] or (new[0] == held[0] == 0 and new[1] > held[1])


# crdt.sync.bucket_hash in two steps, so a bucket's entry hashes are computed
# once per item (tests/test_gossip.py checks the digest equals sync.summarize's).
def _entry_hash(key: bytes, hashed: bytes) -> bytes:
    return sync._entry(key, hashed)


def _bucket_hash(entries: Iterable[bytes]) -> bytes:
    return sync._h(b"".join(sorted(entries)), b"sporemind/bucket")


def _reason(exc: Exception) -> str:
    """A refusal's counter key: its typed `reason` (records.RecordError), else
    the first words of its message."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
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
    send, want = sync.plan(store.listing(buckets), theirs)
    push = store.to_send(send)
    stats.sent = len(push)
    want = store.worth_wanting(theirs, want, MAX_WANT)
    body = sync.pack([sync.encode_delta(push), want])
    pulled = sync.decode_delta(await call("delta", body))
    stats.received = len(pulled)
    wanted = set(want)
    stats.accepted = store.offer({k: v for k, v in pulled.items() if k in wanted})
    return stats


# --- membership ----------------------------------------------------------------------

SUSPECT_AFTER, DROP_AFTER = 2, 4  # failed rounds in a row
PROBE_EVERY = 5  # one round in this many tries a dropped, refusing or unverified address
MAX_MEMBERS = 256  # gossip targets: seeds, DHT contacts, addresses whose round verified
MAX_CANDIDATES = 1024  # addresses named by peer cards only, not verified yet


@dataclass
class Member:
    """What this spore knows of one gossip peer (by address)."""

    host: str
    port: int
    failures: int = 0
    last_ok_s: float | None = None
    refused: str | None = None  # why it refused us, or we it (another swarm…)
    candidate: bool = False  # named by a peer card only: no round with it verified yet

    @property
    def state(self) -> str:
        if self.candidate:
            return "candidate"
        if self.refused is not None:
            return "refused"
        if self.failures >= DROP_AFTER:
            return "dropped"
        if self.failures >= SUSPECT_AFTER:
            return "suspect"
        return "alive" if self.last_ok_s is not None else "unknown"


def _standing(m: Member) -> tuple[bool, bool, int, float]:
    """Sorts the member to let go first first: never verified, refusing, failing, quiet."""
    return m.last_ok_s is not None, m.refused is None, -m.failures, m.last_ok_s or 0.0


class Membership:
    """Gossip targets, and candidates to become ones.

    Seeds and DHT contacts (they answered the DHT's signed challenge) are
    members at once. An address named only by a peer card is a candidate: any
    writer of a card may name any address (a tarpit), so a candidate is tried
    one round in PROBE_EVERY at most and becomes a member once a round with it
    verifies. Both lists are capped, and what goes first is what never
    verified, by a rule no card can win (failures, then chance).
    """

    def __init__(self, me: tuple[str, int], rng: random.Random,
                 max_members: int = MAX_MEMBERS, max_candidates: int = MAX_CANDIDATES) -> None:
        self.me, self.rng = me, rng
        self.max_members, self.max_candidates = max_members, max_candidates
        self.members: dict[tuple[str, int], Member] = {}
        self.candidates: dict[tuple[str, int], Member] = {}
        self.rounds = 0

    def know(self, host: str, port: int) -> Member:
        """A trusted address (a seed, a DHT contact): a member at once, unless
        the members are full of healthy ones (then it is returned unlisted)."""
        member = self.members.get((host, port))
        if member is None:
            member = self.candidates.pop((host, port), None) or Member(host, port)
            member.candidate = False
            self._admit(member)
        return member

    def find(self, host: str, port: int) -> Member | None:
        return self.members.get((host, port)) or self.candidates.get((host, port))

    def propose(self, addresses: Iterable[tuple[str, int]]) -> None:
        """Addresses named by peer cards: candidates, unless known already."""
        for host, port in addresses:
            addr = (host, port)
            if addr not in self.members and addr not in self.candidates and addr != self.me:
                self.candidates[addr] = Member(host, port, candidate=True)
        if len(self.candidates) > self.max_candidates:
            ranked = list(self.candidates.values())
            self.rng.shuffle(ranked)
            ranked.sort(key=lambda m: m.failures)  # stable: chance among equals
            self.candidates = {(m.host, m.port): m for m in ranked[:self.max_candidates]}

    def _admit(self, member: Member) -> bool:
        if len(self.members) >= self.max_members:
            worst = min(self.members.values(), key=_standing)
            if worst.state == "alive":  # a newcomer never pushes out a working peer
                return False
            del self.members[(worst.host, worst.port)]
        self.members[(member.host, member.port)] = member
        return True

    def pick(self, exclude: Container[tuple[str, int]] = ()) -> Member | None:
        """A random peer to gossip with: alive, unknown or suspect ones; one
        round in PROBE_EVERY (every round while none of those is left), an
        address to try instead: in turn, a dropped or refusing member (so it
        is re-admitted when back, or once its exchanges verify again) and a
        candidate (one of the least failed)."""
        self.rounds += 1

        def usable(pool: dict[tuple[str, int], Member]) -> list[Member]:
            return [m for a, m in pool.items() if a != self.me and a not in exclude]

        members = usable(self.members)
        live = [m for m in members if m.state not in ("dropped", "refused")]
        if live and self.rounds % PROBE_EVERY:
            return self._diverse(live)
        dropped = [m for m in members if m.state in ("dropped", "refused")]
        fresh = usable(self.candidates)
        if fresh:
            least = min(m.failures for m in fresh)
            fresh = [m for m in fresh if m.failures == least]
        turn = (dropped, fresh) if (self.rounds // PROBE_EVERY) % 2 else (fresh, dropped)
        for pool in (*turn, live):
            if pool:
                return self._diverse(pool)
        return None

    def _diverse(self, pool: list[Member]) -> Member:
        """A host first, then one of its ports: a thousand identities behind
        one address get one address's share of our rounds (libp2p's peer
        diversity, by host)."""
        by_host: dict[str, list[Member]] = {}
        for m in pool:
            by_host.setdefault(m.host, []).append(m)
        return self.rng.choice(by_host[self.rng.choice(sorted(by_host))])

    def ok(self, member: Member, now_s: float) -> None:
        if member.candidate:
            self.candidates.pop((member.host, member.port), None)
            member.candidate = False
            if self._admit(member):
                log.info("gossip peer %s:%d verified: a gossip target now", member.host,
                         member.port)
        elif member.failures >= DROP_AFTER or member.refused is not None:
            log.info("gossip peer %s:%d is back", member.host, member.port)
        member.failures, member.last_ok_s, member.refused = 0, now_s, None

    def failed(self, member: Member, why: str) -> None:
        member.failures += 1
        if member.candidate:  # a card's address that does not answer: quietly less likely
            return
        if member.failures == SUSPECT_AFTER:
            log.info("gossip peer %s:%d suspected: %s", member.host, member.port, why)
        elif member.failures == DROP_AFTER:
            log.warning("gossip peer %s:%d dropped from gossip and fan-out: %s",
                        member.host, member.port, why)

    def live(self) -> list[Member]:
        return [m for m in self.members.values()
                if m.state in ("alive", "suspect") and (m.host, m.port) != self.me]

    def snapshot(self) -> list[dict[str, Any]]:
        everyone = [*self.members.values(), *self.candidates.values()]
        return [{"host": m.host, "port": m.port, "state": m.state, "failures": m.failures,
                 "last_ok_s": m.last_ok_s, "reason": m.refused}
                for m in sorted(everyone, key=lambda m: (m.host, m.port))
                if (m.host, m.port) != self.me]
