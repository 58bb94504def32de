"""Pure guards for the DHT's untrusted input: framing, strict decoding, limits.

No I/O and no clock of its own (time comes in as a callable), so every limit
here is tested without a socket. dht.protocol applies them to datagrams.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from crdt import wire
from p2pnode.errors import VerifyError

__all__ = [
    "HEADER",
    "ID_BYTES",
    "KEY_BYTES",
    "MAX_ARRAY",
    "MAX_BODY",
    "MAX_DATAGRAM",
    "MAX_KEYS",
    "MAX_PAD",
    "MAX_VALUE",
    "NONCE_BYTES",
    "NOT_SENT",
    "STALE_S",
    "Addr",
    "Admissions",
    "Peer",
    "RecentlyDead",
    "SendCredit",
    "TokenBuckets",
    "pack",
    "reason_of",
    "sanitise_contacts",
    "sanitise_values",
    "unpack",
    "well_formed_answer",
    "well_formed_request",
]

Addr = tuple[str, int]
HEADER = 21  # rpcudp's frame: kind byte + 20-byte message id
MAX_BODY = 8192  # what rpcudp sends at most; bigger input is dropped unread
MAX_DATAGRAM = HEADER + MAX_BODY
MAX_VALUE = MAX_BODY - 96  # leaves room for STORE's name, key and framing
MAX_ARRAY = 64  # the longest list on the wire: a find_node answer (ksize ≤ 64)
ID_BYTES, KEY_BYTES, NONCE_BYTES = 20, 32, 16
MAX_PAD = 320  # the padding an opening challenge carries (see dht.protocol)
MAX_KEYS = 48  # keys one find_values may ask for


def pack(obj: object) -> bytes:
    return wire.pack(obj)


def unpack(body: bytes) -> object:
    """Decode one datagram body with crdt.wire's bounded decoder; every failure
    is a ValueError."""
    return wire.unpack(body, MAX_BODY, "datagram", max_len=MAX_ARRAY, max_map=4, max_str=64,
                       max_bin=MAX_BODY)


def _bin(lo: int, hi: int) -> Callable[[object], bool]:
    return lambda x: isinstance(x, bytes) and lo <= len(x) <= hi


def _keys(x: object) -> bool:
    return (isinstance(x, list) and 1 <= len(x) <= MAX_KEYS
            and all(isinstance(k, bytes) and len(k) == KEY_BYTES for k in x))


# Argument shapes of every RPC a node serves; anything else is a malformed request.
_ARGS: dict[str, tuple[Callable[[object], bool], ...]] = {
    "ping": (_bin(0, 64),),
    "challenge": (_bin(NONCE_BYTES, NONCE_BYTES), _bin(ID_BYTES, ID_BYTES), _bin(0, MAX_PAD)),
    "find_node": (_bin(ID_BYTES, ID_BYTES),),
    "find_value": (_bin(KEY_BYTES, KEY_BYTES),),
    "find_values": (_keys,),
    "store": (_bin(KEY_BYTES, KEY_BYTES), _bin(1, MAX_VALUE)),
}


def well_formed_request(body: object) -> tuple[str, list[bytes]] | None:
    """(rpc name, args) of a decoded request body whose shape we serve, else None."""
    if not (isinstance(body, list) and len(body) == 2 and isinstance(body[0], str)
            and isinstance(body[1], list)):
        return None
    name, args = body
    shape = _ARGS.get(name)
    if shape is None or len(args) != len(shape) or not all(
            ok(a) for ok, a in zip(shape, args, strict=True)):
        return None
    return name, args


def well_formed_answer(answer: object) -> bool:
    """A challenge answer: [public key, DNA hash, signature, knows-you flag]."""
    return (isinstance(answer, list) and len(answer) == 4 and _bin(32, 32)(answer[0])
            and _bin(1, 64)(answer[1]) and _bin(64, 64)(answer[2])
            and isinstance(answer[3], bool))


@dataclass(slots=True)
class Peer:
    """An admitted contact: it proved `public_key` (which hashes to `id`) from `addr`."""

    id: bytes
    public_key: bytes
    addr: Addr
    last_seen: float


STALE_S = 900.0  # an admitted peer silent this long may give its place to a newcomer


class Admissions:
    """Who is admitted, by address and by id, within the per-IP and total caps."""

    def __init__(self, per_ip: int, total: int) -> None:
        self.per_ip, self.total = per_ip, total
        self._by_addr: dict[Addr, Peer] = {}
        self._by_id: dict[bytes, Addr] = {}
        self._ips: Counter[str] = Counter()

    def get(self, addr: Addr) -> Peer | None:
        return self._by_addr.get(addr)

    def __contains__(self, addr: object) -> bool:
        return addr in self._by_addr

    def __len__(self) -> int:
        return len(self._by_addr)

    def peers(self) -> list[Peer]:
        return list(self._by_addr.values())

    def admit(self, peer: Peer) -> tuple[str | None, list[Peer]]:
        """Admit `peer` → (why it was refused, or None; the entries it replaced).

        The same key at the same address refreshes the entry. A new key at
        a known address replaces the old one (the node got a new identity);
        a known key at a new address moves (it proved it holds the key).
        """
        old = self._by_addr.get(peer.addr)
        if old is not None and old.id == peer.id:
            old.last_seen = peer.last_seen
            return None, []
        moved = self._by_addr.get(self._by_id.get(peer.id, ("", 0)))
        gone = [p for p in (old, moved) if p is not None]
        ip = peer.addr[0]
        if self._ips[ip] - sum(p.addr[0] == ip for p in gone) >= self.per_ip:
            stale = self._stalest(peer.last_seen, gone, ip)
            if stale is None:
                return "ip_cap", []
            gone.append(stale)
        if len(self._by_addr) - len(gone) >= self.total:
            stale = self._stalest(peer.last_seen, gone, None)
            if stale is None:
                return "full", []
            gone.append(stale)
        for p in gone:
            self.evict(p.addr)
        self._by_addr[peer.addr], self._by_id[peer.id] = peer, peer.addr
        self._ips[ip] += 1
        return None, gone

    def _stalest(self, now: float, gone: list[Peer], ip: str | None) -> Peer | None:
        """The longest-silent peer (of `ip`, or any), if silent for STALE_S: a
        full table must not refuse newcomers forever for peers long gone."""
        pool = [p for p in self._by_addr.values()
                if p not in gone and (ip is None or p.addr[0] == ip)]
        if not pool:
            return None
        stalest = min(pool, key=lambda p: p.last_seen)
        return stalest if now - stalest.last_seen >= STALE_S else None

    def evict(self, addr: Addr) -> Peer | None:
        peer = self._by_addr.pop(addr, None)
        if peer is None:
            return None
        self._ips[addr[0]] -= 1
        if self._ips[addr[0]] <= 0:
            del self._ips[addr[0]]
        if self._by_id.get(peer.id) == addr:
            del self._by_id[peer.id]
        return peer


class RecentlyDead:
    """Addresses that just timed out. Other peers keep handing out a dead contact
    until they time out on it too; skipping it for a while keeps each lookup
    from waiting for the same dead node again."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self._until: OrderedDict[Addr, float] = OrderedDict()

    def mark(self, addr: Addr, ttl_s: float | None = None) -> None:
        """Skip `addr` for `ttl_s` (default: the full ttl, for a contact given up)."""
        self._until.pop(addr, None)
        self._until[addr] = self.clock() + (self.ttl_s if ttl_s is None else ttl_s)
        if len(self._until) > self.max_entries:
            self._until.popitem(last=False)

    def clear(self, addr: Addr) -> None:
        self._until.pop(addr, None)

    def __contains__(self, addr: object) -> bool:
        until = self._until.get(addr)  # type: ignore[call-overload]
        return until is not None and self.clock() < until


class TokenBuckets:
    """One token bucket per source; the least recently heard sources are forgotten first."""

    def __init__(self, rate_per_s: float, burst: float, max_sources: int,
                 clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.max_sources, self.clock = rate_per_s, burst, max_sources, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, source: str, cost: float = 1.0) -> bool:
        """Take `cost` tokens from `source`'s bucket if it holds them all."""
        now = self.clock()
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= cost
        self._buckets[source] = (tokens - cost if allowed else tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed


class SendCredit:
    """What the latest datagram from each unadmitted address paid for, less what we sent.

    Anything a datagram from an unverified (so possibly spoofed) address
    makes us send is paid from here. Credit is never banked across
    datagrams: each reply is at most its own request, and in all we send an
    address no more than it sent us.
    """

    def __init__(self, max_sources: int) -> None:
        self.max_sources = max_sources
        self._credit: OrderedDict[Addr, int] = OrderedDict()

    def earn(self, addr: Addr, n: int) -> None:
        self._credit.pop(addr, None)
        self._credit[addr] = n
        if len(self._credit) > self.max_sources:
            self._credit.popitem(last=False)

    def spend(self, addr: Addr, n: int) -> bool:
        have = self._credit.get(addr, 0)
        if have < n:
            return False
        self._credit[addr] = have - n
        return True


def sanitise_contacts(result: object, ksize: int) -> list[tuple[bytes, str, int]] | None:
    """A find_node answer as (20-byte id, ip, port) triples, or None if malformed."""
    if not isinstance(result, list) or len(result) > ksize:
        return None
    out = []
    for item in result:
        if not (isinstance(item, list) and len(item) == 3):
            return None
        node_id, ip, port = item
        if not (isinstance(node_id, bytes) and len(node_id) == ID_BYTES
                and isinstance(ip, str) and type(port) is int and 0 < port < 65536):
            return None
        try:
            parsed = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if parsed.is_multicast or parsed.is_unspecified:  # never a peer, only a reflector
            return None
        out.append((node_id, ip, port))
    return out


NOT_SENT = False  # find_values: "held, but it did not fit this reply; ask find_value"


def sanitise_values(result: object, n: int) -> list[bytes | bool | None] | None:
    """A find_values answer: n items, each a value, None (not held) or NOT_SENT."""
    if not (isinstance(result, list) and len(result) == n):
        return None
    if not all(v is None or v is NOT_SENT or isinstance(v, bytes) for v in result):
        return None
    return result


def reason_of(exc: Exception) -> str:
    """A short counter name for why a value was refused: 'bad_memory_signature'."""
    if not isinstance(exc, VerifyError):
        return type(exc).__name__.lower()
    words = [w for w in re.split(r"[^a-z]+", str(exc).lower()) if len(w) > 1][:3]
    return "_".join(words) or "verify"
