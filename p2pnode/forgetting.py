"""Forgetting: an author's tombstone honoured by every spore, and a local hide.

Never-forget is the rule (DESIGN.md 5): a merge never loses a memory. The
one way out is its author's word. ``spore forget ID`` on the author's spore
signs a tombstone (p2pnode.records.Tombstone: memory id, author, swarm,
time), keeps it durably, and gossips it (kind ``F``, one key per memory and
author, quotas as votes have them; only a member in good standing writes
one). Every spore that accepts it drops what it holds of the memory: its row
in storage and the local index, this spore's rated questions on it, and, as
a DHT holder, the content value and the index entries (`purge`); the DHT
store refuses the content, and strips the entries, from then on (`screen`);
asks never rank it whoever still serves it (Swarm.gone); storage refuses it
again (adoption, import). The tombstone stays (gossip store and storage's
``forgotten`` table), so nothing brings the memory back.

A tombstone names its author and is honoured only for a memory that author
wrote (the record, or the index entry, says who): anybody may sign one for
any id and forget nothing of anybody else's. Someone else's memory can only
be hidden, on one's own spore: a mark in storage, never gossiped; the spore
still holds the DHT replicas it keeps for others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from dht import codec
from dht.values import ValueStore
from p2pnode.errors import NotFound, VerifyError
from p2pnode.gossip import KIND_FORGET, Accepted, Validator, forget_key
from p2pnode.records import RecordError, Tombstone, decode_tombstone, make_tombstone
from p2pnode.storage import Forgotten
from p2pnode.swarm import Wanted

if TYPE_CHECKING:
    from dht.index import LocalIndex
    from p2pnode.dna import Dna
    from p2pnode.gossip import GossipStore
    from p2pnode.identity import Identity
    from p2pnode.members import Members
    from p2pnode.storage import Storage
    from p2pnode.swarm import Swarm

__all__ = ["Forgetting", "purge", "tombstone_validator"]

log = logging.getLogger("spore.forgetting")
Standing = Callable[[bytes], "str | None"]
T = TypeVar("T")


class Spore(Protocol):
    """What forgetting needs of its spore (p2pnode.node.Spore, which builds it)."""

    @property
    def identity(self) -> Identity: ...
    @property
    def dna(self) -> Dna: ...
    @property
    def dim(self) -> int: ...
    @property
    def storage(self) -> Storage: ...
    @property
    def index(self) -> LocalIndex: ...
    @property
    def gossip(self) -> GossipStore | None: ...
    @property
    def swarm(self) -> Swarm | None: ...
    @property
    def members(self) -> Members | None: ...
    def now_ms(self) -> int: ...
    async def on_db(self, fn: Callable[..., T], *args: Any) -> T: ...
    async def on_compute(self, fn: Callable[..., T], *args: Any) -> T: ...


def tombstone_validator(swarm: bytes, standing: Standing) -> Validator:
    """How a gossiped tombstone is checked: every field (records), its key,
    its swarm, and its author's standing (as a voter's)."""

    def tombstone_item(key: bytes, item: bytes, now_ms: int) -> tuple[int, Any]:
        t = decode_tombstone(item, now_ms=now_ms)
        if key != forget_key(t.memory_id, t.author):
            raise RecordError("tombstone_key", "tombstone under a wrong key")
        if t.swarm != swarm:
            raise RecordError("tombstone_swarm", "tombstone of another swarm")
        if (why := standing(t.author)) is not None:
            raise RecordError(f"tombstone_{why}", f"tombstone by {t.author.hex()[:16]}…: {why}")
        return t.forgotten_ms, t

    return tombstone_item


def purge(store: ValueStore, tombstoned: Callable[[bytes, bytes], bool],
          memory_ids: Collection[bytes]) -> int:
    """Drop what a DHT holder keeps of forgotten memories: content values
    whose record's author forgot them, index entries by that author. Only
    content under one of the ids, and buckets holding one's bytes (an entry
    carries its memory id as is), are decoded. Returns values changed."""
    changed = 0
    for key in store.keys():  # noqa: SIM118 (a ValueStore, not a dict)
        value = store.get(key)
        if value is None or (key not in memory_ids and not any(m in value for m in memory_ids)):
            continue
        try:
            if value[:1] == codec.KIND_CONTENT:
                rec = codec.decode_content(value, key).memory
                if tombstoned(rec.id, rec.author):
                    store.narrow(key, None)
                    changed += 1
                continue
            entries = codec.decode_bucket(value)
        except VerifyError:
            continue
        kept = [e for e in entries if not tombstoned(e.memory_id, e.author)]
        if len(kept) < len(entries):
            store.narrow(key, codec.encode_bucket(kept, salt=key) if kept else None)
            changed += 1
    return changed


class Forgetting:
    """What this spore forgot, and the acts of forgetting. Built by the Spore,
    it wires itself where forgotten memories must be stopped: the gossip
    store's validators, the swarm's candidates and the DHT store's screen."""

    def __init__(self, spore: Spore) -> None:
        self.spore = spore
        self._tombs: dict[bytes, set[bytes]] = {}  # memory id -> authors that forgot it
        self._hidden: set[bytes] = set()  # memory ids hidden here (any author)
        self.counters: dict[str, int] = {}
        members = spore.members
        standing: Standing = members.standing if members is not None else (lambda key: None)
        if spore.gossip is not None:
            spore.gossip.validators[KIND_FORGET] = tombstone_validator(spore.dna.swarm_id,
                                                                       standing)
        if spore.swarm is not None:
            spore.swarm.gone = self.gone
            spore.swarm.store.screen = self.screen

    # --- what is forgotten ------------------------------------------------------------

    def tombstoned(self, memory_id: bytes, author: bytes) -> bool:
        return author in self._tombs.get(memory_id, ())

    def gone(self, memory_id: bytes, author: bytes) -> bool:
        """Whether a memory by `author` is forgotten here: never an answer."""
        return memory_id in self._hidden or self.tombstoned(memory_id, author)

    def marked(self, memory_id: bytes) -> bool:
        """Whether any mark names the id (whoever wrote the memory)."""
        return memory_id in self._hidden or memory_id in self._tombs

    def _note(self, mark: Forgotten) -> None:
        if mark.author:
            self._tombs.setdefault(mark.memory, set()).add(mark.author)
        else:
            self._hidden.add(mark.memory)

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def screen(self, key: bytes, value: bytes) -> bytes:
        """A DHT value as this holder keeps it: a forgotten memory's content
        refused, its author's index entries stripped (VerifyError if nothing
        is left). Hides are local: replicas for others stay as they are."""
        if not self._tombs:
            return value
        if value[:1] == codec.KIND_CONTENT:
            if key in self._tombs and self.tombstoned(
                    key, codec.decode_content(value, key).memory.author):
                self._count("dht_refused")
                raise VerifyError("forgotten memory content")
            return value
        if value[:1] != codec.KIND_BUCKET:
            return value
        entries = codec.decode_bucket(value)
        kept = [e for e in entries if not self.tombstoned(e.memory_id, e.author)]
        if len(kept) == len(entries):
            return value
        self._count("dht_entries_stripped", len(entries) - len(kept))
        if not kept:
            raise VerifyError("forgotten memory entries")
        return codec.encode_bucket(kept, salt=key)

    # --- taking marks in ---------------------------------------------------------------

    async def load(self) -> None:
        """The marks kept in storage, and the tombstones the gossip store holds
        (one accepted just before a crash is honoured now)."""
        spore = self.spore
        marked: set[tuple[bytes, bytes]] = set()
        for memory, author, _ in await spore.on_db(spore.storage.forgotten):
            self._note(Forgotten(memory, author, None, 0))
            marked.add((memory, author))
        if spore.gossip is None:
            return
        missing = []
        for _, item in spore.gossip.with_prefix(KIND_FORGET):
            try:
                t = decode_tombstone(item)
            except VerifyError:
                continue
            if (t.memory_id, t.author) not in marked:
                missing.append(t)
        if missing:
            await self.honour(missing)

    async def on_gossip(self, accepted: Sequence[Accepted]) -> None:
        tombs = [a.record for a in accepted if a.key[:1] == KIND_FORGET]
        if tombs:
            await self.honour(tombs)

    async def honour(self, tombs: Sequence[Tombstone]) -> int:
        """Forget what these (validated) tombstones name: marks kept, rows
        dropped, the index and the DHT store purged. Returns rows dropped."""
        marks = [Forgotten(t.memory_id, t.author, t.wire, t.forgotten_ms) for t in tombs]
        dropped = await self._drop(marks)
        swarm = self.spore.swarm
        if swarm is not None:
            self._count("dht_purged", purge(swarm.store, self.tombstoned,
                                            {t.memory_id for t in tombs}))
        self._count("tombstones", len(tombs))
        return dropped

    async def _drop(self, marks: Sequence[Forgotten]) -> int:
        spore = self.spore
        for mark in marks:
            self._note(mark)
        rows = await spore.on_db(spore.storage.forget, marks)
        if rows:
            await spore.on_compute(spore.index.remove, rows)
            self._count("memories_dropped", len(rows))
            log.info("forgot %d memories", len(rows))
        return len(rows)

    # --- the act -----------------------------------------------------------------------

    async def forget(self, memory_id: bytes) -> dict[str, Any]:
        """`spore forget`: the author's memory forgotten by every spore (a
        signed tombstone, gossiped), anyone else's hidden here only."""
        spore = self.spore
        row = await spore.on_db(spore.storage.memory_by_id, memory_id)
        author = row.author if row is not None else await self._author_in_swarm(memory_id)
        if author is None:
            if self.marked(memory_id):
                return {"memory_id": memory_id.hex(), "forgotten": "already"}
            raise NotFound(f"no memory with id {memory_id.hex()} here or in the swarm")
        if author != spore.identity.public_key:
            await self._drop([Forgotten(memory_id, b"", None, spore.now_ms())])
            self._count("hidden")
            return {"memory_id": memory_id.hex(), "forgotten": "here",
                    "author": author.hex(), "spread": False}
        t = make_tombstone(spore.identity, memory_id=memory_id, swarm=spore.dna.swarm_id,
                           forgotten_ms=spore.now_ms())
        spread = False
        if spore.gossip is not None:
            key = forget_key(memory_id, author)
            spore.gossip.offer({key: t.wire}, durable=True)
            spread = spore.gossip.get(key) == t.wire
        await self.honour([t])  # kept with synchronous=FULL before we answer
        return {"memory_id": memory_id.hex(), "forgotten": "everywhere",
                "author": author.hex(), "spread": spread}

    async def _author_in_swarm(self, memory_id: bytes) -> bytes | None:
        """The author of a memory this spore does not hold, read from the swarm."""
        swarm = self.spore.swarm
        if swarm is None:
            return None
        found = await swarm.fetch(np.zeros(self.spore.dim, np.float32), [Wanted(memory_id)])
        return found[0].record.author if found else None

    def status(self) -> dict[str, Any]:
        return {"tombstoned": len(self._tombs), "hidden": len(self._hidden), **self.counters}
