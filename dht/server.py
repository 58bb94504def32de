"""SporeDHT: a Kademlia node whose values live on `replicas` holders (DESIGN.md §4).

Built on kademlia's Server (routing table, bucket refresh, Node) over our
hardened SporeProtocol. What the stock Server does with keys and values
(sha1 digests, ForgetfulStorage, crawls that end early, the most common
answer wins, every holder republishing forever, pickled state) is replaced:

* a lookup asks `alpha` contacts at a time and ends only when the k closest
  it has heard of have all answered or failed; it returns the k closest that
  answered, sorted by XOR distance;
* put stores on the `replicas` closest of those and ourselves, and needs
  `write_quorum` acknowledgements;
* get asks the `read_width` closest, verifies and merges every answer, and
  repairs the expected holders that answered stale or nothing;
* the author republishes (`republish`); holders expire (the store's job).

The value rules and the store come in as parameters: no records in here.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from kademlia.network import Server
from kademlia.node import Node

from dht.config import (
    Bind,
    Contact,
    DhtConfig,
    DhtError,
    Lookup,
    NotEnoughReplicas,
    ValueRules,
    ValueStoreLike,
    bind_udp,
)
from dht.guard import (
    MAX_KEYS,
    MAX_VALUE,
    NOT_SENT,
    Addr,
    sanitise_contacts,
    sanitise_values,
)
from dht.plan import closest, cover
from dht.protocol import WHO_ARE_YOU, SporeProtocol
from p2pnode.errors import SporeError, TooLarge, VerifyError
from p2pnode.identity import Identity

__all__ = ["Bind", "Contact", "DhtConfig", "DhtError", "Lookup", "NotEnoughReplicas",
           "SporeDHT", "ValueRules", "ValueStoreLike", "bind_udp"]

log = logging.getLogger(__name__)
_VALID_CACHE = 4096  # fetched values remembered as valid (by digest of key and bytes)
_REPUBLISH_BATCH = 16  # puts in flight at once while republishing


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class SporeDHT(Server):  # type: ignore[misc]
    """One DHT node; `start`, `bootstrap`, then `put`/`get`/`locate`, `stop`."""

    protocol_class = SporeProtocol

    def __init__(self, *, identity: Identity, dna_hash: bytes, store: ValueStoreLike,
                 rules: ValueRules, config: DhtConfig | None = None, bind: Bind = bind_udp,
                 now_ms: Callable[[], int] = _wall_ms,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or DhtConfig()
        super().__init__(ksize=self.config.ksize, alpha=self.config.alpha,
                         node_id=rules.node_id(identity.public_key))
        self.storage = store  # never kademlia's ForgetfulStorage
        self.identity, self.dna_hash, self.rules = identity, dna_hash, rules
        self._bind, self._now_ms, self._clock = bind, now_ms, clock
        self.protocol: SporeProtocol | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._valid: OrderedDict[bytes, None] = OrderedDict()  # digests of values validated

    def _create_protocol(self) -> SporeProtocol:
        self.protocol = self.protocol_class(
            self.node, identity=self.identity, dna_hash=self.dna_hash, store=self.storage,
            rules=self.rules, config=self.config, now_ms=self._now_ms, clock=self._clock)
        return self.protocol

    @property
    def proto(self) -> SporeProtocol:
        if self.protocol is None:
            raise DhtError("the DHT is not started")
        return self.protocol

    @property
    def node_id(self) -> bytes:
        return self.node.id  # type: ignore[no-any-return]

    @property
    def address(self) -> Addr:
        return self.node.ip, self.node.port

    # --- life cycle ------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Addr:
        """Bind (port 0: any free port) and return the address bound."""
        self.transport = await self._bind(self._create_protocol, host, port)
        bound = self.transport.get_extra_info("sockname")
        self.node.ip, self.node.port = bound[0], bound[1]
        self.refresh_table()
        return self.address

    async def listen(self, port: int, interface: str = "0.0.0.0") -> None:
        await self.start(interface, port)

    async def stop(self) -> None:
        if self.refresh_loop is not None:
            self.refresh_loop.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.protocol is not None:
            await self.protocol.aclose()

    def refresh_table(self, interval: float | None = None) -> None:
        """Look up our own id and every lonely bucket now and every refresh interval."""
        self._spawn(self._refresh_table())
        delay = interval or self.config.refresh_interval_s
        self.refresh_loop = asyncio.get_running_loop().call_later(delay, self.refresh_table)

    async def _refresh_table(self) -> None:
        # Unlike the stock refresh, nothing is republished: holders expire,
        # authors republish.
        ids = [self.node.id, *self.proto.get_refresh_ids()]
        await asyncio.gather(*(self.lookup(i) for i in ids))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if len(self._tasks) >= self.config.max_tasks:
            self.proto.counters["busy"] += 1
            coro.close()
            return
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.proto.counters["task_errors"] += 1
            log.error("DHT background task failed", exc_info=task.exception())

    async def bootstrap(self, addrs: Iterable[tuple[str, int]]) -> int:
        """Admit the given peers, then look ourselves up; returns how many answered.

        Raises DhtError if a host name does not resolve (resolve() first to
        skip those and still try the others)."""
        resolved = [await self.resolve(host, port) for host, port in addrs]
        for addr in resolved:
            self.proto.revive(addr)
        answered = await self.admit(resolved)
        await self.lookup(self.node.id)
        return answered

    async def admit(self, addrs: Iterable[Addr]) -> int:
        """Handshake with each (IP, port) not admitted yet, without a lookup and
        without forgiving recent timeouts; returns how many are admitted."""
        peers = await asyncio.gather(*(self.proto.ensure(a) for a in addrs))
        return sum(p is not None for p in peers)

    async def bootstrap_node(self, addr: Addr) -> Node | None:
        peer = await self.proto.ensure(await self.resolve(*addr))
        return None if peer is None else Node(peer.id, *peer.addr)

    async def resolve(self, host: str, port: int) -> Addr:
        """(IP, port) of a peer named by host name or IP; raises DhtError."""
        # Peers are matched by the address their datagrams come from: use IPs.
        try:
            return str(ipaddress.ip_address(host)), port
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise DhtError(f"cannot resolve DHT peer {host}: {exc}") from exc
        if not infos:
            raise DhtError(f"cannot resolve DHT peer {host}")
        return str(infos[0][4][0]), port

    # --- lookups ---------------------------------------------------------------------

    async def lookup(self, target: bytes, k: int | None = None) -> Lookup:
        """The k (default ksize) live nodes closest to `target` (20 bytes), by XOR
        distance: the search ends when the k closest seen have all answered."""
        k, key = k or self.config.ksize, Node(target)
        seen = {n.id: n for n in self.proto.router.find_neighbors(key, k)}
        asked: set[bytes] = set()
        answered: dict[bytes, Node] = {}
        hops = 0
        while todo := [n for n in closest(seen.values(), key, k) if n.id not in asked]:
            todo = todo[: self.alpha]
            hops += 1
            asked.update(n.id for n in todo)
            replies = await asyncio.gather(*(self._ask_nodes(n, target) for n in todo))
            for node, found in zip(todo, replies, strict=True):
                if found is None:
                    del seen[node.id]  # dead, lying or refused: let the next one in
                    continue
                answered[node.id] = node
                for contact in found:
                    seen.setdefault(contact.id, contact)
        return Lookup(closest(answered.values(), key, k), hops)

    async def _closest_with_me(self, key32: bytes, n: int) -> list[Node]:
        target = Node(self.rules.key_id(key32))
        found = (await self.lookup(target.id, max(n, self.config.value_k))).nodes
        return closest([*found, self.node], target, n)

    # --- values ----------------------------------------------------------------------

    async def put(self, key32: bytes, value: bytes) -> int:
        """Store on the `replicas` closest nodes; returns the acknowledgements.

        Raises TooLarge, VerifyError (an invalid value of our own) or
        NotEnoughReplicas when fewer than `write_quorum` holders acknowledged.
        """
        if len(value) > MAX_VALUE:
            raise TooLarge(f"a DHT value is at most {MAX_VALUE} bytes, got {len(value)}")
        self.rules.validate(key32, value)
        holders = await self._closest_with_me(key32, self.config.replicas)
        stored = sum(await asyncio.gather(*(self._store_on(n, key32, value) for n in holders)))
        if stored < self.config.write_quorum:
            raise NotEnoughReplicas(
                f"DHT key {key32.hex()[:16]}… stored on {stored} of {len(holders)} holders "
                f"found, {self.config.write_quorum} needed")
        return stored

    async def get(self, key32: bytes) -> bytes | None:
        """The merge of every verified answer from the closest holders, or None.

        First from the `replicas` closest nodes our routing table knows (one
        round, enough when the table knows the swarm's neighbourhood of the
        key); only if one of them is silent or none holds the value, by a full
        lookup of the `read_width` closest."""
        fast = await self._get_known(key32)
        if fast is not None:
            return fast
        nodes = await self._closest_with_me(key32, self.config.read_width)
        answers = await asyncio.gather(*(self._fetch(n, key32) for n in nodes))
        merged = self._merge(key32, [v for _, v in answers if v is not None])
        if merged is not None:
            expected = zip(nodes[: self.config.replicas], answers, strict=False)
            behind = [n for n, (ok, v) in expected if ok and v != merged]
            if behind:
                self._spawn(self._repair(behind, key32, merged))
        return merged

    async def get_many(self, keys: Iterable[bytes], *, width: int | None = None
                       ) -> dict[bytes, bytes | None]:
        """get() for several keys at once, in one datagram per holder asked.

        Each key's holders are the `replicas` closest nodes our routing table
        knows (ourselves included). With `width` = replicas (the default) all
        of them are asked and their answers merged; with a smaller width the
        fewest holders that cover every key `width` times are asked first
        (the latency path: an ask) and only the keys they did not hold go on
        to the other replicas. A key is settled when a replica answered it:
        with the merge of the values answered, or None when those that
        answered hold nothing. A key no replica answered falls back to get()
        (a full lookup). No repair from here: these are the closest nodes *we*
        know, not necessarily the replicas."""
        keys = list(dict.fromkeys(keys))
        width = self.config.replicas if width is None else max(1, width)
        holders: dict[bytes, list[Node]] = {}
        for key32 in keys:
            target = Node(self.rules.key_id(key32))
            table = self.proto.router.find_neighbors(target, self.config.value_k)
            holders[key32] = closest([*table, self.node], target, self.config.replicas)
        answered: dict[bytes, list[bytes | None]] = {}
        todo = {k: list(h) for k, h in holders.items()}
        for round_width in (width, self.config.replicas):
            plan = cover(todo, round_width)
            if not plan:
                break
            await self._ask_plan(plan, answered)
            asked: dict[bytes, set[bytes]] = {}
            for node, ks in plan:
                for key32 in ks:
                    asked.setdefault(key32, set()).add(node.id)
            for key32 in list(todo):
                rest = [n for n in todo[key32] if n.id not in asked.get(key32, ())]
                values = answered.get(key32, [])
                if rest and not any(v is not None for v in values):
                    todo[key32] = rest
                else:
                    del todo[key32]
        out: dict[bytes, bytes | None] = {}
        missing = []
        for key32 in keys:
            if key32 not in answered:
                missing.append(key32)
                continue
            out[key32] = self._merge(key32, [v for v in answered[key32] if v is not None])
        self.proto.counters["batched_gets"] += len(keys) - len(missing)
        for key32, value in zip(missing, await asyncio.gather(*(self.get(k) for k in missing)),
                                strict=True):
            out[key32] = value
        return out

    async def _ask_plan(self, plan: list[tuple[Node, list[bytes]]],
                        answered: dict[bytes, list[bytes | None]]) -> None:
        batches = [(node, ks[i:i + MAX_KEYS]) for node, ks in plan
                   for i in range(0, len(ks), MAX_KEYS)]
        replies = await asyncio.gather(*(self._ask_values(n, ks) for n, ks in batches))
        for (_, ks), answers in zip(batches, replies, strict=True):
            for key32, (ok, value) in zip(ks, answers, strict=True):
                if ok:
                    answered.setdefault(key32, []).append(value)

    async def _get_known(self, key32: bytes) -> bytes | None:
        target = Node(self.rules.key_id(key32))
        table = self.proto.router.find_neighbors(target, self.config.value_k)
        nodes = closest([*table, self.node], target, self.config.replicas)
        if len(nodes) < self.config.replicas:
            return None
        answers = await asyncio.gather(*(self._fetch(n, key32) for n in nodes))
        if not all(ok for ok, _ in answers):
            return None
        merged = self._merge(key32, [v for _, v in answers if v is not None])
        if merged is not None:
            # No repair from here: these are the closest nodes *we* know, not
            # necessarily the replicas (repairing them over-replicated values).
            self.proto.counters["one_round_gets"] += 1
        return merged

    async def locate(self, key32: bytes) -> list[tuple[str, str, int]]:
        """(node id hex, ip, port) of the k closest nodes that hold `key32`."""
        nodes = await self._closest_with_me(key32, self.config.ksize)
        answers = await asyncio.gather(*(self._fetch(n, key32) for n in nodes))
        return [(n.id.hex(), n.ip, n.port) for n, (_, v) in zip(nodes, answers, strict=True)
                if v is not None]

    async def republish(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Put every (key32, value) again (the author's duty); returns how many succeeded."""
        done, it = 0, iter(items)
        while batch := list(itertools.islice(it, _REPUBLISH_BATCH)):
            results = await asyncio.gather(*(self._republish_one(k, v) for k, v in batch))
            done += sum(results)
        return done

    async def _republish_one(self, key32: bytes, value: bytes) -> bool:
        try:
            await self.put(key32, value)
        except NotEnoughReplicas as exc:
            self.proto.counters["republish_failed"] += 1
            log.warning("%s", exc)
            return False
        return True

    def _merge(self, key32: bytes, values: list[bytes]) -> bytes | None:
        merged: bytes | None = None
        # Replicas usually agree byte for byte: merge each distinct value once.
        for value in dict.fromkeys(values):
            try:
                merged = value if merged is None else self.rules.merge(key32, merged, value)
            except VerifyError as exc:  # two verified values that do not merge: keep ours
                self.proto.count_reject(exc, "merge_refused")
        return merged

    async def _repair(self, nodes: list[Node], key32: bytes, value: bytes) -> None:
        acks = await asyncio.gather(*(self._store_on(n, key32, value) for n in nodes))
        self.proto.counters["repaired"] += sum(acks)

    async def _store_on(self, node: Node, key32: bytes, value: bytes) -> bool:
        if node.id != self.node.id:
            return await self._ask_store(node, key32, value)
        try:
            self.storage.put(key32, value, self.node.id, self._now_ms())
        except SporeError as exc:  # quota or a broken store file: this holder refuses
            self.proto.count_reject(exc)
            return False
        return True

    async def _fetch(self, node: Node, key32: bytes) -> tuple[bool, bytes | None]:
        if node.id == self.node.id:
            return True, self.storage.get(key32)
        return await self._ask_value(node, key32)

    # --- asking peers (every answer sanitised; a malformed one is no answer) ---------

    async def _ask(self, node: Node, name: str, args: list[object]) -> tuple[bool, object]:
        addr = (node.ip, node.port)
        for _ in range(2):  # once more if the peer forgot us (restart, eviction)
            if await self.proto.ensure(addr, node.id) is None:
                return False, None
            ok, result = await self.proto.request(addr, name, args)
            if not (isinstance(result, str) and result == WHO_ARE_YOU):
                return ok, result
            self.proto.forgotten_by(addr)
        return False, None

    async def _ask_nodes(self, node: Node, target: bytes) -> list[Node] | None:
        ok, result = await self._ask(node, "find_node", [target])
        contacts = sanitise_contacts(result, self.config.ksize) if ok else None
        if ok and contacts is None:
            self.proto.counters["malformed_responses"] += 1
        if contacts is None:
            return None
        me = (self.node.id, *self.address)
        return [Node(*c) for c in contacts if c[0] != me[0] and c[1:] != me[1:]]

    async def _ask_value(self, node: Node, key32: bytes) -> tuple[bool, bytes | None]:
        """(answered, verified value or None); a forged value counts as no answer."""
        ok, result = await self._ask(node, "find_value", [key32])
        if not ok or result is None:
            return ok, None
        if not isinstance(result, bytes):
            self.proto.counters["malformed_responses"] += 1
            return False, None
        return (True, result) if self._checked(key32, result) else (False, None)

    async def _ask_values(self, node: Node, keys: list[bytes]
                          ) -> list[tuple[bool, bytes | None]]:
        """find_value for several keys in one datagram (what did not fit, alone)."""
        if node.id == self.node.id:
            return [(True, self.storage.get(k)) for k in keys]
        ok, result = await self._ask(node, "find_values", [keys])
        values = sanitise_values(result, len(keys)) if ok else None
        if values is None:
            if ok:
                self.proto.counters["malformed_responses"] += 1
            return [(False, None)] * len(keys)
        out: list[tuple[bool, bytes | None]] = []
        for key32, value in zip(keys, values, strict=True):
            if value is NOT_SENT:
                out.append(await self._ask_value(node, key32))
            elif isinstance(value, bytes):
                out.append((True, value) if self._checked(key32, value) else (False, None))
            else:
                out.append((True, None))
        return out

    def _checked(self, key32: bytes, value: bytes) -> bool:
        """Validate a fetched value (once per distinct key and bytes); count forgeries."""
        digest = hashlib.sha256(key32 + value).digest()
        if digest in self._valid:  # the same value from another replica, or again
            self._valid.move_to_end(digest)
            return True
        try:
            self.rules.validate(key32, value)
        except VerifyError as exc:
            self.proto.count_reject(exc, "rejected_fetch")
            return False
        self._valid[digest] = None
        if len(self._valid) > _VALID_CACHE:
            self._valid.popitem(last=False)
        return True

    async def _ask_store(self, node: Node, key32: bytes, value: bytes) -> bool:
        ok, result = await self._ask(node, "store", [key32, value])
        return ok and result is True

    # --- faces -----------------------------------------------------------------------

    def contacts(self) -> list[Contact]:
        """The routing table, closest buckets first, with when each was last heard."""
        now, peers = self._clock(), {p.id: p for p in self.proto.peers()}
        out = []
        for bucket in self.proto.router.buckets:
            for n in bucket.get_nodes():
                peer = peers.get(n.id)
                seen = None if peer is None else round(now - peer.last_seen, 3)
                out.append(Contact(n.id.hex(), n.ip, n.port, seen))
        return out

    @property
    def counters(self) -> dict[str, int]:
        if self.protocol is None:
            return {}
        return {**self.protocol.counters, "contacts": len(self.contacts())}

    # --- stock entry points that would bypass all of the above -----------------------

    async def set(self, key: Any, value: Any) -> bool:
        raise DhtError("SporeDHT stores 32-byte keys with put(key32, value)")

    async def set_digest(self, dkey: Any, value: Any) -> bool:
        raise DhtError("SporeDHT stores 32-byte keys with put(key32, value)")

    def save_state(self, fname: Any) -> None:
        raise DhtError("SporeDHT keeps no pickled state; the caller keeps its peer list")

    @classmethod
    async def load_state(cls, fname: Any, port: int, interface: str = "0.0.0.0") -> Any:
        raise DhtError("SporeDHT never unpickles state")
