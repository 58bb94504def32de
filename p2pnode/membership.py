"""Who belongs to a swarm: certificates, tickets, passes, revocations, the roster.

Pure codecs and one pure view (DESIGN.md 5b), time passed in. Records travel
as ``msgpack([body, signature])`` and are checked in their one ``decode_*``, as
in p2pnode.records; a refusal is a RecordError whose ``reason`` is a counter key.

A **certificate** ("`member` belongs") is signed by a founder or by a member
whose own says ``may_invite``. A **ticket** is an open swarm's self-signed
entry, paying a puzzle: sha256(PUZZLE_DOMAIN ‖ swarm ‖ member ‖ nonce) starts
with the DNA's ``puzzle_bits`` zero bits. A **pass** (certificate chain from a
founder, or ticket) is signed by its holder, so nobody else can replace it in
gossip under ``pass_key(member)``. A **revocation** by a key ever a founder
excludes a key and every chain through it, for good (``revoke_key(target)``).
The **Roster** derives standing from held items, alike in any order.
Invitation codes and the join exchange are p2pnode.joining's.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from p2pnode.identity import PUBLIC_KEY_BYTES, Envelope, Identity
from p2pnode.records import (
    ID_BYTES,
    RecordError,
    _blob,
    _pack,
    _text,
    _time,
    _unpack_signed,
    _verify,
)

__all__ = [
    "CERT_DOMAIN", "KIND_PASS", "KIND_REVOKE", "MAX_CHAIN", "MAX_PASSES",
    "MAX_REVOCATIONS", "MAX_WHY_CHARS", "PASS_DOMAIN", "PUZZLE_DOMAIN", "REVOKE_DOMAIN",
    "TICKET_DOMAIN", "Certificate", "Pass", "Revocation", "Roster", "Ticket",
    "decode_certificate", "decode_pass", "decode_revocation", "decode_ticket", "invited_pass",
    "issue", "pass_key", "puzzle_ok", "revoke", "revoke_key", "solve", "ticket_pass",
]

CERT_DOMAIN = b"sporemind/certificate/v1"
TICKET_DOMAIN = b"sporemind/ticket/v1"
PASS_DOMAIN = b"sporemind/pass/v1"
REVOKE_DOMAIN = b"sporemind/revocation/v1"
PUZZLE_DOMAIN = b"sporemind/puzzle/v1"
KIND_PASS, KIND_REVOKE = b"M", b"R"
MAX_CHAIN = 4  # certificates in a pass: founder → … → holder
MAX_PASS_BYTES = 4096
MAX_WHY_CHARS = 200
MAX_PASSES = 65_536  # a Roster's passes
MAX_REVOCATIONS = 4_096  # a Roster's revocations
NONCE_BYTES = 8
_VERSION = 1
T = TypeVar("T")


class _Signed:
    """A signed record travels as msgpack([body, signature]): an Envelope."""

    body: bytes
    signature: bytes

    @property
    def wire(self) -> bytes:
        return Envelope(self.body, self.signature).wire


def pass_key(member: bytes) -> bytes:
    return KIND_PASS + member


def revoke_key(target: bytes) -> bytes:
    return KIND_REVOKE + target


def _key(value: object, field: str) -> bytes:
    return _blob(value, field, (PUBLIC_KEY_BYTES,))


# --- certificates -----------------------------------------------------------------------

@dataclass(frozen=True)
class Certificate(_Signed):
    swarm: bytes
    member: bytes
    issuer: bytes
    may_invite: bool
    issued_ms: int
    body: bytes
    signature: bytes


def issue(identity: Identity, *, swarm: bytes, member: bytes, may_invite: bool,
          issued_ms: int) -> Certificate:
    body = _pack(["cert", _VERSION, swarm, member, identity.public_key, may_invite, issued_ms])
    return Certificate(swarm, member, identity.public_key, may_invite, issued_ms, body,
                       identity.sign(CERT_DOMAIN, body))


def decode_certificate(data: bytes, *, now_ms: int) -> Certificate:
    """Parse, check and verify one certificate (not yet its place in a chain)."""
    body, sig, f = _unpack_signed(data, "certificate", "cert", 7)
    _, _, swarm, member, issuer, may_invite, issued = f
    if not isinstance(may_invite, bool):
        raise RecordError("may_invite_type", "may_invite must be a boolean")
    cert = Certificate(_blob(swarm, "swarm", (ID_BYTES,)), _key(member, "member"),
                       _key(issuer, "issuer"), may_invite,
                       _time(issued, "issued_ms", now_ms), body, sig)
    _verify(cert.issuer, CERT_DOMAIN, body, sig)
    return cert


# --- tickets ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Ticket(_Signed):
    swarm: bytes
    member: bytes
    nonce: bytes
    issued_ms: int
    body: bytes
    signature: bytes


def _limit(bits: int) -> bytes | None:
    """Digests below this (as big-endian bytes) have `bits` leading zero bits."""
    return None if bits == 0 else (1 << (256 - bits)).to_bytes(32, "big")


def puzzle_ok(swarm: bytes, member: bytes, nonce: bytes, bits: int) -> bool:
    limit = _limit(bits)
    digest = hashlib.sha256(PUZZLE_DOMAIN + swarm + member + nonce).digest()
    return limit is None or digest < limit


def solve(identity: Identity, swarm: bytes, bits: int, issued_ms: int) -> Ticket:
    """Pay the puzzle (2**bits hashes on average) and sign the ticket."""
    prefix = hashlib.sha256(PUZZLE_DOMAIN + swarm + identity.public_key)
    limit = _limit(bits)
    start = int.from_bytes(secrets.token_bytes(NONCE_BYTES), "big")
    for i in itertools.count():
        nonce = ((start + i) % (1 << 64)).to_bytes(NONCE_BYTES, "big")
        h = prefix.copy()
        h.update(nonce)
        if limit is None or h.digest() < limit:
            break
    body = _pack(["ticket", _VERSION, swarm, identity.public_key, nonce, issued_ms])
    return Ticket(swarm, identity.public_key, nonce, issued_ms, body,
                  identity.sign(TICKET_DOMAIN, body))


def decode_ticket(data: bytes, *, now_ms: int) -> Ticket:
    """Parse, check and verify a ticket (not yet its puzzle)."""
    body, sig, f = _unpack_signed(data, "ticket", "ticket", 6)
    _, _, swarm, member, nonce, issued = f
    ticket = Ticket(_blob(swarm, "swarm", (ID_BYTES,)), _key(member, "member"),
                    _blob(nonce, "nonce", (NONCE_BYTES,)),
                    _time(issued, "issued_ms", now_ms), body, sig)
    _verify(ticket.member, TICKET_DOMAIN, body, sig)
    return ticket


# --- passes -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Pass(_Signed):
    """A holder's proof of membership: a certificate chain or a ticket."""

    kind: str  # "invited" or "ticket"
    member: bytes
    certificates: tuple[Certificate, ...]
    ticket: Ticket | None
    body: bytes
    signature: bytes

    @property
    def since_ms(self) -> int:
        """Issue time of the last certificate, or the ticket's (its holder's claim)."""
        return self.ticket.issued_ms if self.ticket else self.certificates[-1].issued_ms

    @property
    def issuers(self) -> tuple[bytes, ...]:
        """The keys the chain runs through, founder first (none for a ticket)."""
        return tuple(c.issuer for c in self.certificates)

    @property
    def may_invite(self) -> bool:
        return bool(self.certificates) and self.certificates[-1].may_invite

    @property
    def inviter(self) -> bytes | None:
        return self.certificates[-1].issuer if self.certificates else None


def _signed_pass(holder: Identity, kind: str, certs: tuple[Certificate, ...],
                 ticket: Ticket | None) -> Pass:
    records = [c.wire for c in certs] if ticket is None else [ticket.wire]
    body = _pack(["pass", _VERSION, kind, records])
    return Pass(kind, holder.public_key, certs, ticket, body, holder.sign(PASS_DOMAIN, body))


def invited_pass(parent: Pass | None, cert: Certificate, holder: Identity) -> Pass:
    """`holder`'s pass: its inviter's chain (`parent`; None when a founder
    issued `cert`) followed by `cert`. Not checked here: decode_pass judges."""
    chain = (parent.certificates if parent else ()) + (cert,)
    return _signed_pass(holder, "invited", chain, None)


def ticket_pass(ticket: Ticket, holder: Identity) -> Pass:
    return _signed_pass(holder, "ticket", (), ticket)


def decode_pass(data: bytes, *, swarm: bytes, founders: frozenset[bytes], puzzle_bits: int,
                now_ms: int) -> Pass:
    """Parse and judge a pass for `swarm`, whose keys ever founders are
    `founders` (dna.founders_ever). A ticket needs puzzle_bits > 0: a swarm
    without a puzzle has no use for one. RecordError(pass_*) if refused."""
    try:
        body, sig, (_, _, kind, records) = _unpack_signed(data, "pass", "pass", 4,
                                                          max_bytes=MAX_PASS_BYTES)
        if kind not in ("invited", "ticket") or not isinstance(records, list) \
                or not all(isinstance(r, bytes) for r in records) \
                or not 1 <= len(records) <= (MAX_CHAIN if kind == "invited" else 1):
            raise RecordError("pass_malformed", "a pass holds 1..4 certificates or one ticket")
        certs: tuple[Certificate, ...] = ()
        ticket: Ticket | None = None
        if kind == "ticket":
            ticket = decode_ticket(records[0], now_ms=now_ms)
        else:
            certs = tuple(decode_certificate(r, now_ms=now_ms) for r in records)
        holder = ticket.member if ticket else certs[-1].member
        _verify(holder, PASS_DOMAIN, body, sig)
    except RecordError as exc:
        raise _as_pass_error(exc) from exc
    if ticket is not None:
        _judge_ticket(ticket, swarm, puzzle_bits)
    else:
        _judge_chain(certs, swarm, founders)
    return Pass(kind, holder, certs, ticket, body, sig)


def _as_pass_error(exc: RecordError) -> RecordError:
    if exc.reason.startswith("pass_"):
        return exc
    if exc.reason == "record_signature":
        return RecordError("pass_signature", str(exc))
    if exc.reason.endswith("_future"):
        return RecordError("pass_time", str(exc))
    return RecordError("pass_malformed", f"{exc.reason}: {exc}")


def _judge_ticket(ticket: Ticket, swarm: bytes, puzzle_bits: int) -> None:
    if ticket.swarm != swarm:
        raise RecordError("pass_swarm", "ticket of another swarm")
    if puzzle_bits == 0 or not puzzle_ok(swarm, ticket.member, ticket.nonce, puzzle_bits):
        raise RecordError("pass_puzzle", f"ticket does not pay a {puzzle_bits}-bit puzzle")


def _judge_chain(certs: tuple[Certificate, ...], swarm: bytes,
                 founders: frozenset[bytes]) -> None:
    if any(c.swarm != swarm for c in certs):
        raise RecordError("pass_swarm", "certificate of another swarm")
    if certs[0].issuer not in founders:
        raise RecordError("pass_issuer", "the first certificate is not a founder's")
    for before, after in itertools.pairwise(certs):
        if after.issuer != before.member or not before.may_invite:
            raise RecordError("pass_chain", "a certificate is not issued by the member "
                              "before it, or that member may not invite")
    if len({c.member for c in certs}) != len(certs):
        raise RecordError("pass_chain", "a key appears twice in the chain")


# --- revocations ------------------------------------------------------------------------

@dataclass(frozen=True)
class Revocation(_Signed):
    swarm: bytes
    target: bytes
    issuer: bytes
    why: str
    at_ms: int
    body: bytes
    signature: bytes


def revoke(identity: Identity, *, swarm: bytes, target: bytes, why: str,
           at_ms: int) -> Revocation:
    body = _pack(["revoke", _VERSION, swarm, target, identity.public_key, why, at_ms])
    return Revocation(swarm, target, identity.public_key, why, at_ms, body,
                      identity.sign(REVOKE_DOMAIN, body))


def decode_revocation(data: bytes, *, swarm: bytes, founders: frozenset[bytes],
                      current_founders: frozenset[bytes], now_ms: int) -> Revocation:
    """Parse and judge a revocation: by a key ever a founder (`founders`),
    of a key not a founder now (retire it first)."""
    body, sig, f = _unpack_signed(data, "revocation", "revoke", 7)
    _, _, swarm_f, target, issuer, why, at = f
    rev = Revocation(_blob(swarm_f, "swarm", (ID_BYTES,)), _key(target, "target"),
                     _key(issuer, "issuer"), _text(why, "why", MAX_WHY_CHARS, label=True),
                     _time(at, "at_ms", now_ms), body, sig)
    if rev.swarm != swarm:
        raise RecordError("revocation_swarm", "revocation of another swarm")
    if rev.issuer not in founders:
        raise RecordError("revocation_issuer", "revocation not signed by a founder")
    if rev.target in current_founders:
        raise RecordError("revocation_founder", "a founder cannot be revoked; retire it first")
    _verify(rev.issuer, REVOKE_DOMAIN, body, sig)
    return rev


# --- the roster -------------------------------------------------------------------------

class Roster:
    """Standing of every key, derived from the held (already decoded) passes
    and revocations. Per key it keeps what gossip keeps: the pass with the
    highest (since_ms, wire), the revocation with the highest (at_ms, wire); so
    the same items give the same view in any order. Beyond MAX_PASSES /
    MAX_REVOCATIONS keys, put_* raises RecordError("roster_full")."""

    def __init__(self, membership: str, puzzle_bits: int, founders_now: frozenset[bytes]) -> None:
        self._passes: dict[bytes, Pass] = {}
        self._revoked: dict[bytes, Revocation] = {}
        self.reset_dna(membership, puzzle_bits, founders_now)

    def reset_dna(self, membership: str, puzzle_bits: int,
                  founders_now: frozenset[bytes]) -> None:
        """Take a new DNA version's rules (founders added or retired)."""
        self.membership, self.puzzle_bits, self.founders = membership, puzzle_bits, founders_now

    def copy(self) -> Roster:
        """A snapshot another thread may read while this one changes (the
        held items are immutable: only the maps are copied)."""
        other = Roster(self.membership, self.puzzle_bits, self.founders)
        other._passes, other._revoked = dict(self._passes), dict(self._revoked)
        return other

    def put_pass(self, p: Pass) -> bool:
        """Hold `p` unless a newer pass of its member is held; whether it changed."""
        return _put(self._passes, p.member, p, lambda q: (q.since_ms, q.wire), MAX_PASSES)

    def put_revocation(self, r: Revocation) -> bool:
        return _put(self._revoked, r.target, r, lambda q: (q.at_ms, q.wire),
                    MAX_REVOCATIONS)

    def is_revoked(self, key: bytes) -> bool:
        return key in self._revoked and key not in self.founders

    def standing(self, key: bytes) -> str | None:
        """None for a member in good standing, else why not: "not_member",
        "revoked", "revoked_inviter" (a key in its chain is revoked)."""
        if key in self.founders:
            return None
        if self.is_revoked(key):
            return "revoked"
        if self.membership == "open" and self.puzzle_bits == 0:
            return None  # a swarm from before membership: everyone holding the DNA
        p = self._passes.get(key)
        if p is None or (p.kind == "ticket" and self.membership != "open"):
            return "not_member"
        if any(self.is_revoked(k) for k in p.issuers):
            return "revoked_inviter"
        return None

    def kind(self, key: bytes) -> str | None:
        if key in self.founders:
            return "founder"
        p = self._passes.get(key)
        return p.kind if p else None

    def since_ms(self, key: bytes) -> int | None:
        p = self._passes.get(key)
        return p.since_ms if p else None

    def known(self) -> list[bytes]:
        """Every key the roster knows: founders, pass holders, revoked."""
        return sorted(self.founders | self._passes.keys() | self._revoked.keys())

    def members(self) -> list[dict[str, object]]:
        """Every key the roster knows (founders, pass holders, revoked), for
        `spore members`, sorted by key."""
        keys = sorted(self.founders | self._passes.keys() | self._revoked.keys())
        return [self._row(k) for k in keys]

    def _row(self, key: bytes) -> dict[str, object]:
        p, revoked = self._passes.get(key), self.is_revoked(key)
        inviter = p.inviter if p else None
        return {"node_id": hashlib.sha256(key).hexdigest(), "key": key.hex(),
                "kind": self.kind(key), "since_ms": p.since_ms if p else None,
                "may_invite": key in self.founders or bool(p and p.may_invite),
                "inviter": inviter.hex() if inviter else None,
                "standing": self.standing(key) or "member", "revoked": revoked,
                "why": self._revoked[key].why if revoked else None}


def _put(held: dict[bytes, T], key: bytes, item: T, rank: Callable[[T], tuple[int, bytes]],
         cap: int) -> bool:
    old = held.get(key)
    if old is None and len(held) >= cap:
        raise RecordError("roster_full", f"the roster holds {cap} of these already")
    if old is not None and rank(old) >= rank(item):
        return False
    held[key] = item
    return True
