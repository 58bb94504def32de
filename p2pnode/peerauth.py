"""Signed peer requests: who sent it, for which swarm, when, and only once.

Every HTTP request one spore makes of another carries five headers::

    Spore-Key        the sender's Ed25519 public key (hex)
    Spore-Swarm      the swarm id it belongs to (hex)
    Spore-Time       its clock, in ms since the epoch
    Spore-Nonce      16 random bytes (hex), never accepted twice
    Spore-Signature  over method, path, swarm, time, nonce and the body's SHA-256

The receiver refuses, with a reason it counts, a request that is malformed,
of another swarm, outside the clock window, a replay, or badly signed.
Answers are signed the same way, bound to the request's nonce, so an answer
cannot be replayed onto another request either. Clock and nonce come in as
arguments; the only state is the bounded set of nonces seen in the window.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping

from p2pnode.errors import VerifyError
from p2pnode.identity import Identity, verify

__all__ = ["DOMAIN", "REPLY_DOMAIN", "Refused", "Verifier", "sign_reply", "sign_request",
           "verify_reply"]

DOMAIN = b"sporemind/peer-request/v1"
REPLY_DOMAIN = b"sporemind/peer-reply/v1"
WINDOW_MS = 30_000  # how far a request's clock may be from ours
NONCE_BYTES = 16
MAX_NONCES = 1 << 16  # nonces remembered (the window's worth at ~2k requests/s)
HEADERS = ("Spore-Key", "Spore-Swarm", "Spore-Time", "Spore-Nonce", "Spore-Signature")


class Refused(VerifyError):
    """A peer request we will not serve; `reason` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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


class Verifier:
    """Checks signed requests for one swarm; remembers nonces for the window."""

    def __init__(self, swarm: bytes, window_ms: int = WINDOW_MS,
                 max_nonces: int = MAX_NONCES) -> None:
        self.swarm, self.window_ms, self.max_nonces = swarm, window_ms, max_nonces
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # nonce → its request time

    def check(self, headers: Mapping[str, str], method: str, path: str, body: bytes,
              now_ms: int) -> bytes:
        """The sender's public key, or Refused(reason) — checked cheapest first,
        and the nonce is remembered only once the signature holds."""
        key = _hex(headers, "Spore-Key", 32)
        swarm = _hex(headers, "Spore-Swarm", 32)
        nonce = _hex(headers, "Spore-Nonce", NONCE_BYTES)
        sig = _hex(headers, "Spore-Signature", 64)
        try:
            time_ms = int(headers.get("Spore-Time", ""))
        except ValueError:
            raise Refused("malformed", "header Spore-Time is not an integer") from None
        if swarm != self.swarm:
            raise Refused("another_swarm", f"request for swarm {swarm.hex()[:16]}…, "
                          f"this spore is in {self.swarm.hex()[:16]}…")
        if abs(now_ms - time_ms) > self.window_ms:
            raise Refused("stale", f"request time is {(now_ms - time_ms) / 1000:+.1f} s off "
                          f"(window ±{self.window_ms // 1000} s): check the clocks")
        self._forget_before(now_ms - self.window_ms)
        if nonce in self._seen:
            raise Refused("replay", "this request was already served")
        try:
            verify(key, DOMAIN, _payload(method, path, swarm, time_ms, nonce, body), sig)
        except VerifyError as exc:
            raise Refused("bad_signature", f"request signature: {exc}") from exc
        if len(self._seen) >= self.max_nonces:
            raise Refused("busy", "too many requests in the replay window")
        self._seen[nonce] = time_ms
        return key

    def _forget_before(self, oldest_ms: int) -> None:
        # Nonces are remembered in arrival order; request times within the
        # window are close to it, so stop at the first one still inside.
        while self._seen:
            nonce, t = next(iter(self._seen.items()))
            if t >= oldest_ms:
                break
            del self._seen[nonce]
