"""Signed peer requests: who sent it, for which swarm, when, and only once.

Every HTTP request one spore makes of another carries five headers::

    Spore-Key        the sender's Ed25519 public key (hex)
    Spore-Swarm      the swarm id it belongs to (hex)
    Spore-Time       its clock, in ms since the epoch
    Spore-Nonce      16 random bytes (hex), never accepted twice
    Spore-Signature  over method, path, swarm, time, nonce and the body's SHA-256

The receiver refuses, with a reason it counts, a request that is malformed,
of another swarm, outside the clock window, a replay, badly signed, or from a
key that sent more than its share of the window. Everything but the
signature is checked from the headers alone (`Verifier.precheck`), before a
body is read. Answers are signed the same way, bound to the request's nonce,
so an answer cannot be replayed onto another request either. Clock and nonce
come in as arguments; the only state is the bounded cache of nonces seen in
the window.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

from p2pnode.errors import VerifyError
from p2pnode.identity import Identity, verify

__all__ = ["DOMAIN", "REPLY_DOMAIN", "Claim", "Refused", "ReplayCache", "Verifier",
           "sign_reply", "sign_request", "verify_reply"]

DOMAIN = b"sporemind/peer-request/v1"
REPLY_DOMAIN = b"sporemind/peer-reply/v1"
WINDOW_MS = 30_000  # how far a request's clock may be from ours
NONCE_BYTES = 16
MAX_NONCES = 1 << 16  # nonces remembered in all (the window's worth at ~2k requests/s)
# One sender's nonces in the window: an honest spore sends a few requests a
# second at most; a flood from one key is refused without touching the others.
MAX_NONCES_PER_KEY = 2048
TIME_DIGITS = 15  # a Spore-Time longer than this is not a time of this era
HEADERS = ("Spore-Key", "Spore-Swarm", "Spore-Time", "Spore-Nonce", "Spore-Signature")


class Refused(VerifyError):
    """A peer request we will not serve; `reason` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Claim(NamedTuple):
    """What a request's headers say, well-formed but not yet verified."""

    key: bytes
    swarm: bytes
    time_ms: int
    nonce: bytes
    signature: bytes


def _payload(method: str, path: str, swarm: bytes, time_ms: int, nonce: bytes,
             body: bytes) -> bytes:
    return b"\n".join([method.upper().encode(), path.encode(), swarm, str(time_ms).encode(),
                       nonce, hashlib.sha256(body).digest()])


def sign_request(identity: Identity, swarm: bytes, method: str, path: str, body: bytes,
                 now_ms: int, nonce: bytes) -> dict[str, str]:
    """The five headers of a signed request (`nonce`: 16 random bytes from the caller)."""
    sig = identity.sign(DOMAIN, _payload(method, path, swarm, now_ms, nonce, body))
    return {"Spore-Key": identity.public_key.hex(), "Spore-Swarm": swarm.hex(),
            "Spore-Time": str(now_ms), "Spore-Nonce": nonce.hex(),
            "Spore-Signature": sig.hex()}


def sign_reply(identity: Identity, request_nonce: bytes, body: bytes) -> dict[str, str]:
    sig = identity.sign(REPLY_DOMAIN, request_nonce + hashlib.sha256(body).digest())
    return {"Spore-Key": identity.public_key.hex(), "Spore-Signature": sig.hex()}


def verify_reply(headers: Mapping[str, str], request_nonce: bytes, body: bytes,
                 expect_key: bytes | None = None) -> bytes:
    """The replier's public key, if the reply is signed for our request; else Refused."""
    key, sig = _hex(headers, "Spore-Key", 32), _hex(headers, "Spore-Signature", 64)
    if expect_key is not None and key != expect_key:
        raise Refused("wrong_peer", "the reply is signed by another key than the one asked")
    try:
        verify(key, REPLY_DOMAIN, request_nonce + hashlib.sha256(body).digest(), sig)
    except VerifyError as exc:
        raise Refused("bad_signature", f"reply signature: {exc}") from exc
    return key


def _hex(headers: Mapping[str, str], name: str, size: int) -> bytes:
    raw = headers.get(name)
    if raw is None:
        raise Refused("unsigned", f"missing header {name}")
    try:
        value = bytes.fromhex(raw)
    except ValueError:
        raise Refused("malformed", f"header {name} is not hex") from None
    if len(value) != size:
        raise Refused("malformed", f"header {name} must be {size} bytes")
    return value


def _time(headers: Mapping[str, str]) -> int:
    raw = headers.get("Spore-Time", "")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= TIME_DIGITS):
        raise Refused("malformed", "header Spore-Time is not a time in ms")
    return int(raw)


class Verifier:
    """Checks signed requests for one swarm; remembers nonces for the window."""

    def __init__(self, swarm: bytes, window_ms: int = WINDOW_MS,
                 max_nonces: int = MAX_NONCES,
                 max_nonces_per_key: int = MAX_NONCES_PER_KEY) -> None:
        self.swarm, self.window_ms = swarm, window_ms
        self._seen = ReplayCache(max_nonces, max_nonces_per_key)

    def precheck(self, headers: Mapping[str, str], now_ms: int) -> Claim:
        """What the headers alone can refuse (shape, swarm, clock, replay, a
        key over its budget): cheap enough to run before a body is read."""
        claim = Claim(_hex(headers, "Spore-Key", 32), _hex(headers, "Spore-Swarm", 32),
                      _time(headers), _hex(headers, "Spore-Nonce", NONCE_BYTES),
                      _hex(headers, "Spore-Signature", 64))
        if claim.swarm != self.swarm:
            raise Refused("another_swarm", f"request for swarm {claim.swarm.hex()[:16]}…, "
                          f"this spore is in {self.swarm.hex()[:16]}…")
        if abs(now_ms - claim.time_ms) > self.window_ms:
            raise Refused("stale", f"request time is {(now_ms - claim.time_ms) / 1000:+.1f} s "
                          f"off (window ±{self.window_ms // 1000} s): check the clocks")
        self._seen.forget_before(now_ms - self.window_ms)
        self._seen.admit(claim.key, claim.nonce, claim.time_ms)
        return claim

    def check(self, headers: Mapping[str, str], method: str, path: str, body: bytes,
              now_ms: int) -> bytes:
        """The sender's public key, or Refused(reason) — checked cheapest first,
        and the nonce is remembered only once the signature holds. (The
        headers are checked again: another request may have spent the nonce
        or the key's budget while this one's body was read.)"""
        claim = self.precheck(headers, now_ms)
        try:
            verify(claim.key, DOMAIN, _payload(method, path, claim.swarm, claim.time_ms,
                                               claim.nonce, body), claim.signature)
        except VerifyError as exc:
            raise Refused("bad_signature", f"request signature: {exc}") from exc
        self._seen.remember(claim.key, claim.nonce, claim.time_ms)
        return claim.key


class ReplayCache:
    """The nonces of the window, with a budget per sender key.

    A key holds at most `per_key` nonces: past that its requests are refused
    'busy_key', and nobody else's are. When all `capacity` places are taken
    (by many keys), a newcomer evicts the oldest nonce of the key holding the
    most, and from then on that key's requests dated at or before the evicted
    one are refused ('busy_key'): an evicted nonce can never be replayed, and
    no key can push out the nonces of a key holding fewer.
    """

    def __init__(self, capacity: int, per_key: int) -> None:
        self.capacity, self.per_key = capacity, per_key
        self._seen: OrderedDict[bytes, bytes] = OrderedDict()  # nonce → key, arrival order
        self._by_key: dict[bytes, OrderedDict[bytes, int]] = {}  # key → nonce → its time
        self._holding: dict[int, dict[bytes, None]] = {}  # n → the keys holding n nonces
        self._most = 0  # the most nonces any key holds
        self._floors: OrderedDict[bytes, int] = OrderedDict()  # key → its last evicted time

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, key: bytes, nonce: bytes, time_ms: int) -> None:
        """Refused unless a request with this key, nonce and time may be served."""
        if nonce in self._seen:
            raise Refused("replay", "this request was already served")
        held = self._by_key.get(key)
        if held is not None and len(held) >= self.per_key:
            raise Refused("busy_key", f"this key sent over {self.per_key} requests in the "
                          "replay window")
        if time_ms <= self._floors.get(key, -1):
            raise Refused("busy_key", "this key sent too many requests: its older ones are "
                          "no longer accepted")

    def remember(self, key: bytes, nonce: bytes, time_ms: int) -> None:
        """Remember a verified request's nonce (admit() it first)."""
        if len(self._seen) >= self.capacity:
            if len(self._floors) >= self.capacity:
                raise Refused("busy", "too many keys sent requests in the replay window")
            self._evict()
        held = self._by_key.setdefault(key, OrderedDict())
        held[nonce] = time_ms
        self._seen[nonce] = key
        self._recount(key, len(held) - 1, len(held))

    def forget_before(self, oldest_ms: int) -> None:
        # In arrival order: request times within the window are close to it,
        # so stop at the first one still inside (keeping one longer is safe).
        while self._seen:
            nonce, key = next(iter(self._seen.items()))
            if self._by_key[key][nonce] >= oldest_ms:
                break
            self._drop(key, nonce)
        while self._floors and next(iter(self._floors.values())) < oldest_ms:
            self._floors.popitem(last=False)

    def _evict(self) -> None:
        heavy = next(iter(self._holding[self._most]))
        nonce, time_ms = next(iter(self._by_key[heavy].items()))
        self._drop(heavy, nonce)
        self._floors[heavy] = max(time_ms, self._floors.pop(heavy, -1))

    def _drop(self, key: bytes, nonce: bytes) -> None:
        held = self._by_key[key]
        del self._seen[nonce], held[nonce]
        self._recount(key, len(held) + 1, len(held))
        if not held:
            del self._by_key[key]

    def _recount(self, key: bytes, before: int, after: int) -> None:
        if before:
            keys = self._holding[before]
            del keys[key]
            if not keys:
                del self._holding[before]
        if after:
            self._holding.setdefault(after, {})[key] = None
        self._most = max(self._most, after)
        while self._most and self._most not in self._holding:
            self._most -= 1
