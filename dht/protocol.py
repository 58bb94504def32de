"""Kademlia's protocol, hardened for an open network (DESIGN.md §4, NOTES.md).

The frame stays rpcudp's (0x00 request | 0x01 response, a 20-byte message
id, a msgpack body), but everything between the socket and the handlers is
replaced:

* a datagram over MAX_DATAGRAM is dropped unread; bodies are decoded by C
  msgpack under strict limits; bad input is counted, never raised;
* requests are rate-limited per source IP and handled inline; only
  handshakes run as tasks, and those are capped;
* a contact enters the routing table only after answering a signed
  challenge (its key hashes to its id, its DNA hash is ours), at most
  ``max_contacts_per_ip`` of them per IP;
* whatever a datagram from an unadmitted address makes us send is paid from
  the bytes that address sent (SendCredit): a spoofed source gets back at
  most what was sent in its name;
* a response must come from the address asked (dht.server sanitises it).

The handshake, A opening to B (both end up admitting each other)::

    A → B  challenge(nonce_a, id_a, pad)   padded: pays for B's two sends
    B → A  [pub_b, dna_b, sig_b(nonce_a ‖ id_b ‖ dna), knows_a]
    B → A  challenge(nonce_b, id_b, pad')  only when B does not know A
    A → B  [pub_a, dna_a, sig_a(nonce_b ‖ id_a ‖ dna), True]
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import RoutingTable

from dht.guard import (
    HEADER,
    MAX_BODY,
    MAX_DATAGRAM,
    MAX_PAD,
    NONCE_BYTES,
    NOT_SENT,
    Addr,
    Admissions,
    Peer,
    RecentlyDead,
    SendCredit,
    TokenBuckets,
    pack,
    reason_of,
    unpack,
    well_formed_answer,
    well_formed_request,
)
from p2pnode.errors import SporeError, TooLarge, VerifyError
from p2pnode.identity import Identity, verify

if TYPE_CHECKING:
    from dht.config import DhtConfig, ValueRules, ValueStoreLike

__all__ = ["CHALLENGE_DOMAIN", "WHO_ARE_YOU", "SporeProtocol", "SporeRoutingTable"]

log = logging.getLogger(__name__)

REQUEST, RESPONSE = b"\x00", b"\x01"
CHALLENGE_DOMAIN = b"sporemind/dht/challenge/v1"
# An opening challenge pays for the answer (157 B) and our counter-challenge;
# a counter-challenge pays for its answer. See guard.SendCredit.
OPEN_PAD, COUNTER_PAD = MAX_PAD, 128
# The whole reply an unadmitted sender gets to find_node/find_value/store.
WHO_ARE_YOU = "challenge-first"
EVICT_AFTER = 3  # timeouts in a row before a contact is forgotten
REFUSED_KEPT = 256  # addresses whose handshake was refused, with the reason
_BAD = object()  # decode failed (None is a valid body)


class SporeRoutingTable(RoutingTable):  # type: ignore[misc]
    """Kademlia's table with a neighbour search that really returns the k closest.

    The stock TableTraverser stops once one side runs out of buckets, so it
    returned fewer than k contacts in 13-28% of searches (none in 1.5-4.5%).
    """

    def find_neighbors(self, node: Node, k: int | None = None,
                       exclude: Node | None = None) -> list[Node]:
        found = [n for bucket in self.buckets for n in bucket.get_nodes()
                 if n.id != node.id and (exclude is None or not n.same_home_as(exclude))]
        found.sort(key=node.distance_to)
        return found[: k or self.ksize]


class _Pending:
    __slots__ = ("addr", "future", "timer")

    def __init__(self, future: asyncio.Future[tuple[bool, object]],
                 timer: asyncio.TimerHandle, addr: Addr) -> None:
        self.future, self.timer, self.addr = future, timer, addr


class SporeProtocol(KademliaProtocol):  # type: ignore[misc]
    """The datagram side of one DHT node: admission, limits, the five RPCs."""

    def __init__(self, source_node: Node, *, identity: Identity, dna_hash: bytes,
                 store: ValueStoreLike, rules: ValueRules, config: DhtConfig,
                 now_ms: Callable[[], int], clock: Callable[[], float]) -> None:
        super().__init__(source_node, store, config.ksize)
        self.router = SporeRoutingTable(self, config.ksize, source_node)
        self._wait_timeout = config.rpc_timeout_s
        self.identity, self.dna_hash, self.store = identity, dna_hash, store
        self.rules, self.config, self.now_ms, self.clock = rules, config, now_ms, clock
        self.counters: Counter[str] = Counter()
        self.refused: OrderedDict[Addr, str] = OrderedDict()  # newest last
        self._outstanding: dict[bytes, _Pending] = {}
        self._admitted = Admissions(config.max_contacts_per_ip, config.max_contacts)
        self._dead = RecentlyDead(config.dead_ttl_s, config.max_sources, clock)
        self._failures: dict[Addr, int] = {}  # timeouts in a row, per admitted address
        self._handshakes: dict[Addr, asyncio.Task[Peer | None]] = {}
        # Addresses that have (as far as we know) admitted us: we answered their challenge.
        self._answered: set[Addr] = set()
        self._answer_events: dict[Addr, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._limits = TokenBuckets(config.rate_per_s, config.rate_burst,
                                    config.max_sources, clock)
        self._credit = SendCredit(config.max_sources)

    # --- datagrams in ----------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        src: Addr = (addr[0], addr[1])
        self.counters["datagrams"] += 1
        if len(data) > MAX_DATAGRAM:
            self.counters["oversize"] += 1
            return
        self._dead.clear(src)  # it is back (or says so: the worst is one more timeout)
        self._failures.pop(src, None)
        if len(data) <= HEADER or data[:1] not in (REQUEST, RESPONSE):
            self.counters["decode_errors"] += 1
            return
        try:
            if data[:1] == RESPONSE:
                self._on_response(data[1:HEADER], data[HEADER:], src)
            elif self._limits.take(src[0]):
                self._on_request(data, src)
            else:
                self.counters["rate_limited"] += 1
        except Exception:  # a bug of ours must not let asyncio close the socket
            self.counters["handler_errors"] += 1
            log.exception("DHT datagram from %s:%s", *src)

    def error_received(self, exc: Exception) -> None:
        self.counters["socket_errors"] += 1

    def _decode(self, body: bytes) -> object:
        try:
            return unpack(body)
        except (ValueError, TypeError):  # every msgpack decode error is a ValueError
            self.counters["decode_errors"] += 1
            return _BAD

    def _on_request(self, data: bytes, src: Addr) -> None:
        peer = self._admitted.get(src)
        if peer is None:
            self._credit.earn(src, len(data))
        else:
            peer.last_seen = self.clock()
        body = self._decode(data[HEADER:])
        if body is _BAD:
            return
        if (call := well_formed_request(body)) is None:
            self.counters["malformed_requests"] += 1
            return
        name, args = call
        self.counters[f"rpc_served_{name}"] += 1  # names from guard's table: bounded
        result = getattr(self, f"rpc_{name}")(src, *args)
        self._reply(src, data[1:HEADER], result)

    def _on_response(self, msg_id: bytes, body: bytes, src: Addr) -> None:
        pending = self._outstanding.get(msg_id)
        if pending is None or pending.addr != src:
            self.counters["unexpected_responses"] += 1
            return
        del self._outstanding[msg_id]
        pending.timer.cancel()
        result = self._decode(body)
        if (peer := self._admitted.get(src)) is not None:
            peer.last_seen = self.clock()
        if not pending.future.done():
            pending.future.set_result((result is not _BAD, None if result is _BAD else result))

    # --- datagrams out ---------------------------------------------------------------

    def _send(self, addr: Addr, data: bytes, *, triggered: bool) -> bool:
        """Send, unless it was triggered by an unadmitted address that has not paid for it."""
        if self.transport is None or self.transport.is_closing():
            return False
        if triggered and addr not in self._admitted and not self._credit.spend(addr, len(data)):
            self.counters["amplification_capped"] += 1
            return False
        self.transport.sendto(data, addr)
        return True

    def _reply(self, addr: Addr, msg_id: bytes, result: object) -> None:
        data = RESPONSE + msg_id + pack(result)
        if len(data) > MAX_DATAGRAM:
            self.counters["reply_too_large"] += 1
            return
        self._send(addr, data, triggered=True)

    async def request(self, addr: Addr, name: str, args: list[object], *,
                       triggered: bool = False) -> tuple[bool, object]:
        """(answered, result) of one RPC; a timeout evicts the contact."""
        if len(self._outstanding) >= self.config.max_outstanding:
            self.counters["busy"] += 1
            return False, None
        msg_id = os.urandom(20)
        data = REQUEST + msg_id + pack([name, args])
        if len(data) > MAX_DATAGRAM:
            raise TooLarge(f"a DHT {name} of {len(data)} bytes is over {MAX_DATAGRAM}")
        if not self._send(addr, data, triggered=triggered):
            return False, None
        self.counters[f"rpc_sent_{name}"] += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool, object]] = loop.create_future()
        timer = loop.call_later(self._wait_timeout, self._expire, msg_id)
        self._outstanding[msg_id] = _Pending(future, timer, addr)
        return await future

    def _expire(self, msg_id: bytes) -> None:
        pending = self._outstanding.pop(msg_id, None)
        if pending is None:
            return
        self.counters["timeouts"] += 1
        if not pending.future.done():
            pending.future.set_result((False, None))
        # Skipped briefly at once, skipped long and forgotten only after
        # EVICT_AFTER timeouts in a row: a busy peer (a Pi under load) answers
        # late, and its late answer clears the mark without a new handshake.
        failures = self._failures.get(pending.addr, 0) + 1
        if failures >= EVICT_AFTER or len(self._failures) >= self.config.max_sources:
            self._failures.pop(pending.addr, None)
            self._dead.mark(pending.addr)
            self.evict(pending.addr)
        else:
            self._failures[pending.addr] = failures
            self._dead.mark(pending.addr, 2 * self._wait_timeout)  # a suspect, briefly

    # --- the RPCs we serve -----------------------------------------------------------

    def rpc_ping(self, sender: Addr, nodeid: bytes) -> bytes:
        return self.source_node.id  # type: ignore[no-any-return]

    def rpc_challenge(self, sender: Addr, nonce: bytes, their_id: bytes, pad: bytes) -> object:
        peer = self._admitted.get(sender)
        knows = peer is not None and peer.id == their_id
        if not knows and not self._handshaking(sender):
            self._start_handshake(sender, triggered=True)
        if knows or self._handshaking(sender):
            self._mark_answered(sender)
        me = self.source_node.id
        sig = self.identity.sign(CHALLENGE_DOMAIN, nonce + me + self.dna_hash)
        return [self.identity.public_key, self.dna_hash, sig, knows]

    def _member(self, sender: Addr) -> Peer | None:
        """The admitted contact at `sender` if it may still take part: one the
        swarm revoked since its handshake is forgotten here."""
        peer = self._admitted.get(sender)
        if peer is not None and (why := self.rules.admit(peer.public_key)) is not None:
            self.counters[f"refused_{why}"] += 1
            self.evict(sender)
            return None
        return peer

    def expel(self) -> int:
        """Forget every admitted contact the swarm no longer admits (after a revocation)."""
        gone = [p.addr for p in self._admitted.peers() if self.rules.admit(p.public_key)]
        for addr in gone:
            self.counters["expelled"] += 1
            self.evict(addr)
        return len(gone)

    def rpc_find_node(self, sender: Addr, key: bytes) -> object:
        peer = self._member(sender)
        if peer is None:
            return WHO_ARE_YOU
        near = self.router.find_neighbors(Node(key), exclude=Node(peer.id, *sender))
        return [[n.id, n.ip, n.port] for n in near]

    def rpc_find_value(self, sender: Addr, key32: bytes) -> object:
        if self._member(sender) is None:
            return WHO_ARE_YOU
        return self.store.get(key32)

    def rpc_find_values(self, sender: Addr, keys: list[bytes]) -> object:
        """Several values in one reply, in the order asked; what would not fit
        in the datagram is answered NOT_SENT (the asker fetches it alone)."""
        if self._member(sender) is None:
            return WHO_ARE_YOU
        out: list[bytes | bool | None] = []
        room = MAX_BODY - 8
        for key32 in keys:
            value = self.store.get(key32)
            if value is not None and len(value) + 8 > room:
                out.append(NOT_SENT)
                room -= 1
                continue
            out.append(value)
            room -= 1 if value is None else len(value) + 8
        return out

    def rpc_store(self, sender: Addr, key32: bytes, value: bytes) -> object:
        # Validate first, so a forgery is counted by what is wrong with it,
        # whoever sent it; only then is the sender's admission checked.
        try:
            self.rules.validate(key32, value)
        except VerifyError as exc:
            self.count_reject(exc)
            return False
        peer = self._member(sender)
        if peer is None:
            self.counters["rejected_unadmitted"] += 1
            return WHO_ARE_YOU
        try:
            self.store.put(key32, value, peer.id, self.now_ms())
        except SporeError as exc:  # quota, verification, a broken store file
            self.count_reject(exc)
            return False
        self.counters["stored"] += 1
        return True

    def count_reject(self, exc: Exception, where: str = "rejected") -> None:
        key = f"{where}_{reason_of(exc)}"
        # Reasons come from our codec's messages; cap their number all the same.
        if key not in self.counters and sum(k.startswith(where) for k in self.counters) >= 32:
            key = f"{where}_other"
        self.counters[key] += 1

    # --- admission -------------------------------------------------------------------

    def peers(self) -> list[Peer]:
        return self._admitted.peers()

    def revive(self, addr: Addr) -> None:
        """Try `addr` again even if it timed out lately (a configured peer may be back)."""
        self._dead.clear(addr)

    def forgotten_by(self, addr: Addr) -> None:
        """The peer answered WHO_ARE_YOU: it restarted or evicted us; handshake again."""
        self._answered.discard(addr)

    async def ensure(self, addr: Addr, expect_id: bytes | None = None) -> Peer | None:
        """The admitted peer at `addr` (handshaking first if needed), or None."""
        peer = self._admitted.get(addr)
        if addr in self._dead:
            self.counters["skipped_dead"] += 1
            return None
        if peer is None or addr not in self._answered:
            task = self._handshakes.get(addr) if self._handshaking(addr) else None
            task = task or self._start_handshake(addr, triggered=False)
            if task is None:
                return None
            peer = await asyncio.shield(task)
        if peer is not None and expect_id is not None and peer.id != expect_id:
            self.counters["contact_id_mismatch"] += 1  # a stale or invented contact
            return None
        return peer

    def _handshaking(self, addr: Addr) -> bool:
        # A finished task lingers until its done-callback runs: it does not count.
        task = self._handshakes.get(addr)
        return task is not None and not task.done()

    def _start_handshake(self, addr: Addr, *, triggered: bool) -> asyncio.Task[Peer | None] | None:
        if triggered and len(self._tasks) >= self.config.max_tasks:
            self.counters["busy"] += 1
            return None
        task = asyncio.ensure_future(self._handshake(addr, triggered))
        self._handshakes[addr] = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._handshake_done(addr, t))
        return task

    def _handshake_done(self, addr: Addr, task: asyncio.Task[Peer | None]) -> None:
        self._tasks.discard(task)
        if self._handshakes.get(addr) is task:
            del self._handshakes[addr]
        if addr not in self._admitted:
            self._answered.discard(addr)
        if not task.cancelled() and task.exception() is not None:
            self.counters["handler_errors"] += 1
            log.error("DHT handshake with %s:%s failed", *addr, exc_info=task.exception())

    async def _handshake(self, addr: Addr, triggered: bool) -> Peer | None:
        nonce = os.urandom(NONCE_BYTES)
        pad = bytes(COUNTER_PAD if triggered else OPEN_PAD)
        ok, answer = await self.request(addr, "challenge", [nonce, self.source_node.id, pad],
                                         triggered=triggered)
        if not ok:
            return None
        peer = self._check_answer(addr, nonce, answer)
        if peer is not None and isinstance(answer, list):
            if answer[3] is True:
                self._mark_answered(addr)
            elif not triggered:
                await self._await_answered(addr)
        return peer

    def _check_answer(self, addr: Addr, nonce: bytes, answer: object) -> Peer | None:
        if not well_formed_answer(answer):
            return self._refuse("malformed")
        public_key, dna_hash, sig = answer[0], answer[1], answer[2]  # type: ignore[index]
        if dna_hash != self.dna_hash:
            return self._refuse("dna_mismatch", addr)
        try:
            node_id = self.rules.node_id(public_key)
            verify(public_key, CHALLENGE_DOMAIN, nonce + node_id + dna_hash, sig)
        except VerifyError:
            return self._refuse("bad_signature")
        if node_id == self.source_node.id:
            return self._refuse("self")
        if (why := self.rules.admit(public_key)) is not None:
            return self._refuse(why, addr)
        return self._admit(addr, node_id, public_key)

    def _refuse(self, reason: str, addr: Addr | None = None) -> Peer | None:
        self.counters[f"refused_{reason}"] += 1
        if addr is not None:  # who we would not admit, and why (`spore peers`)
            self.refused.pop(addr, None)
            self.refused[addr] = reason
            if len(self.refused) > REFUSED_KEPT:
                self.refused.pop(next(iter(self.refused)))
        return None

    def _admit(self, addr: Addr, node_id: bytes, public_key: bytes) -> Peer | None:
        refused, replaced = self._admitted.admit(Peer(node_id, public_key, addr, self.clock()))
        for old in replaced:  # a new key at that address, or that key at a new address
            self._forget(old)
        if refused is not None:
            return self._refuse(refused)
        self.counters["admitted"] += 1
        self.welcome_if_new(Node(node_id, addr[0], addr[1]))
        return self._admitted.get(addr)

    def welcome_if_new(self, node: Node) -> None:
        """Add an *admitted* contact to the routing table; never send it anything.

        The stock version hashed keys a second time (so values went to
        arbitrary nodes) and answered a 50-byte ping with up to 200 STOREs to
        an unverified, spoofable address. Values reach new nodes through the
        authors' republish and read repair instead.
        """
        peer = self._admitted.get((node.ip, node.port))
        if peer is not None and peer.id == node.id:
            self.router.add_contact(node)

    def evict(self, addr: Addr) -> None:
        """Forget a dead or replaced contact: routing table and admission."""
        peer = self._admitted.evict(addr)
        self._answered.discard(addr)
        if peer is not None:
            self._forget(peer)

    def _forget(self, peer: Peer) -> None:
        self._answered.discard(peer.addr)
        self.router.remove_contact(Node(peer.id, *peer.addr))
        self.counters["evicted"] += 1

    def _mark_answered(self, addr: Addr) -> None:
        self._answered.add(addr)
        if (event := self._answer_events.get(addr)) is not None:
            event.set()

    async def _await_answered(self, addr: Addr) -> None:
        """Wait (bounded) for the peer's counter-challenge, so it knows us before we ask."""
        if addr in self._answered:
            return
        event = self._answer_events.setdefault(addr, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), self._wait_timeout)
        except TimeoutError:
            self.counters["handshake_one_way"] += 1
        finally:
            self._answer_events.pop(addr, None)

    async def call_ping(self, node_to_ask: Node) -> tuple[bool, object]:
        # Kademlia's routing table pings a full bucket's head this way.
        return await self.request((node_to_ask.ip, node_to_ask.port), "ping",
                                   [self.source_node.id])

    def handle_call_response(self, result: Any, node: Node) -> Any:
        return result  # admission and eviction happen in the handshake and on timeout

    async def aclose(self) -> None:
        """Fail what is outstanding, cancel handshakes, close the transport."""
        for pending in self._outstanding.values():
            pending.timer.cancel()
            if not pending.future.done():
                pending.future.set_result((False, None))
        self._outstanding.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()
