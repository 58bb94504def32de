"""Joining an invite swarm: the invitation code and the join exchange.

An **invitation** code (``spore1-…``, from `spore invite`) says where to ask
(the inviter's peer HTTP host and port), for which swarm (its id's first 8
bytes) and with which one-time token. The joiner sends `join_request` (the
token and its key, signed by that key) to the inviter's ``join`` route; the
inviter answers `join_answer` (the DNA chain, its own pass, the joiner's new
certificate), which the joiner judges with `decode_join_answer` before it
signs its own pass (p2pnode.membership.invited_pass). Pure codecs.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass

from crdt import wire
from p2pnode import dna as dna_mod
from p2pnode.errors import VerifyError
from p2pnode.identity import Identity
from p2pnode.membership import (
    MAX_PASS_BYTES,
    Certificate,
    Pass,
    _key,
    decode_certificate,
    decode_pass,
)
from p2pnode.records import RecordError, _blob, _host, _pack, _verify

__all__ = ["INVITE_PREFIX", "JOIN_DOMAIN", "Invitation", "decode_invitation",
           "decode_join_answer", "decode_join_request", "join_answer", "join_request"]

JOIN_DOMAIN = b"sporemind/join/v1"
TOKEN_BYTES = 16
SWARM_PREFIX_BYTES = 8
MAX_JOIN_REQUEST = 256
MAX_JOIN_ANSWER = dna_mod.MAX_CHAIN_BYTES + 2 * MAX_PASS_BYTES
_VERSION = 1

INVITE_PREFIX = "spore1-"
_CHECK_BYTES = 4


@dataclass(frozen=True)
class Invitation:
    """Where to ask to join (the inviter's peer HTTP host and port), which
    swarm (its id's first 8 bytes) and the one-time token to show there."""

    host: str
    port: int
    swarm_prefix: bytes
    token: bytes

    def encode(self) -> str:
        """``spore1-`` + base32 (lower case, unpadded) of version ‖ swarm prefix ‖
        token ‖ port ‖ host (4 or 16 address bytes, or a length-prefixed name)
        ‖ 4 bytes of SHA-256 over the rest, so that a typo is caught."""
        try:
            addr = ipaddress.ip_address(self.host)
            host = bytes([addr.version]) + addr.packed
        except ValueError:
            host = bytes([0, len(self.host)]) + self.host.encode("ascii")
        raw = (bytes([_VERSION]) + self.swarm_prefix + self.token
               + self.port.to_bytes(2, "big") + host)
        raw += hashlib.sha256(raw).digest()[:_CHECK_BYTES]
        return INVITE_PREFIX + base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def decode_invitation(code: str) -> Invitation:
    """The invitation a code names; RecordError("invitation_*") if it is not one."""
    text = "".join(code.split()).lower() if isinstance(code, str) else ""
    if not text.startswith(INVITE_PREFIX) or len(text) > 600:
        raise RecordError("invitation_malformed", f"an invitation code starts {INVITE_PREFIX}")
    data = text[len(INVITE_PREFIX):].upper()
    try:
        raw = base64.b32decode(data + "=" * (-len(data) % 8))
    except ValueError as exc:
        raise RecordError("invitation_malformed", "the code has letters base32 has not") from exc
    raw, check = raw[:-_CHECK_BYTES], raw[-_CHECK_BYTES:]
    if len(raw) < 29 or hashlib.sha256(raw).digest()[:_CHECK_BYTES] != check:
        raise RecordError("invitation_checksum", "the code is mistyped or cut short")
    if raw[0] != _VERSION:
        raise RecordError("invitation_version", "an invitation code of another version")
    prefix, token, port, kind, rest = raw[1:9], raw[9:25], raw[25:27], raw[27], raw[28:]
    if len(rest) != {4: 4, 6: 16, 0: 1 + rest[0]}.get(kind):
        raise RecordError("invitation_malformed", "the code's host is cut or too long")
    host = str(ipaddress.ip_address(rest)) if kind else rest[1:].decode("ascii", "replace")
    if port == bytes(2):
        raise RecordError("invitation_port", "the code's port is 0")
    return Invitation(_host(host), int.from_bytes(port, "big"), prefix, token)


def _unpack_list(body: bytes, limit: int, n: int, what: str) -> list[object]:
    try:
        return wire.as_list(wire.unpack(body, limit, what), what, n, exact=n)
    except wire.DecodeError as exc:
        raise RecordError("join_malformed", f"malformed {exc}") from exc


def join_request(identity: Identity, token: bytes) -> bytes:
    """A joiner's request: the invitation's token and its key, signed by that key."""
    key = identity.public_key
    return _pack([token, key, identity.sign(JOIN_DOMAIN, token + key)])


def decode_join_request(body: bytes) -> tuple[bytes, bytes]:
    """(token, joiner's key) of a verified join request; RecordError otherwise."""
    token, key, sig = _unpack_list(body, MAX_JOIN_REQUEST, 3, "join request")
    token, key = _blob(token, "token", (TOKEN_BYTES,)), _key(key, "key")
    _verify(key, JOIN_DOMAIN, token + key, _blob(sig, "signature", (64,)))
    return token, key


def join_answer(chain: list[dna_mod.Dna], parent: Pass | None, cert: Certificate) -> bytes:
    """The inviter's answer: the swarm's DNA chain, the inviter's own pass
    (none if it is a founder) and the joiner's new certificate."""
    return _pack([dna_mod.chain_wire(chain), parent.wire if parent else b"", cert.wire])


def decode_join_answer(body: bytes, *, invitation: Invitation, member: bytes,
                       now_ms: int) -> tuple[list[dna_mod.Dna], Pass | None, Certificate]:
    """Judge an inviter's answer: a chain of the invited swarm, a valid parent
    pass, and a certificate for `member` from a founder or the parent's holder
    who may invite. The joiner then makes its pass with invited_pass."""
    chain_b, parent_b, cert_b = _unpack_list(body, MAX_JOIN_ANSWER, 3, "join answer")
    try:  # the chain's own v1 names the swarm; the invitation's prefix must match it
        first = dna_mod.chain_wires(chain_b)[0]  # type: ignore[arg-type]
        chain = dna_mod.decode_chain(chain_b, hashlib.sha256(first).digest())  # type: ignore[arg-type]
    except (TypeError, VerifyError) as exc:
        raise RecordError("join_malformed", f"malformed join answer: {exc}") from exc
    swarm, founders = chain[0].hash, dna_mod.founders_ever(chain)
    if swarm[:SWARM_PREFIX_BYTES] != invitation.swarm_prefix:
        raise RecordError("join_swarm", "the answer is for another swarm than the invitation")
    parent = None if parent_b == b"" else decode_pass(
        parent_b, swarm=swarm, founders=founders,  # type: ignore[arg-type]
        puzzle_bits=chain[-1].puzzle_bits, now_ms=now_ms)
    cert = decode_certificate(cert_b, now_ms=now_ms)  # type: ignore[arg-type]
    ok_issuer = (cert.issuer == parent.member and parent.may_invite) if parent \
        else cert.issuer in founders
    if cert.swarm != swarm or cert.member != member or not ok_issuer:
        raise RecordError("join_certificate", "the certificate is not this joiner's, or its "
                          "issuer may not invite")
    return chain, parent, cert
