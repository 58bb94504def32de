"""Membership records (p2pnode.membership): certificates, tickets, passes,
revocations, the roster and invitations. Pure: no daemon, time passed in.

Every decoder's only outcomes are a record or a RecordError with a reason,
whatever the fields a hostile member signs."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from p2pnode import dna as dna_mod
from p2pnode import joining
from p2pnode import membership as mb
from p2pnode.identity import Identity
from p2pnode.records import MAX_SKEW_MS, RecordError

NOW = 1_800_000_000_000
F1 = Identity.from_seed(b"founder one")
F2 = Identity.from_seed(b"founder two")
ALICE = Identity.from_seed(b"alice")
BOB = Identity.from_seed(b"bob")
CAROL = Identity.from_seed(b"carol")
EVE = Identity.from_seed(b"eve")
EXAMPLES = settings(max_examples=200, deadline=None)
BITS = 8  # tests' puzzles: 256 hashes on average


def _dna(membership: str = "invite", bits: int | None = None) -> dna_mod.Dna:
    return dna_mod.found(F1, swarm="m", encoder_name="e", encoder_sha256="ab" * 32, dim=8,
                         created_ms=1, seed=b"s" * 16, membership=membership, puzzle_bits=bits)


DNA = _dna()
SWARM = DNA.swarm_id
FOUNDERS = frozenset({F1.public_key})


def _cert(issuer: Identity, member: Identity, may_invite: bool = False, at: int = NOW,
          swarm: bytes = SWARM) -> mb.Certificate:
    return mb.issue(issuer, swarm=swarm, member=member.public_key, may_invite=may_invite,
                    issued_ms=at)


def _decode(p: mb.Pass | bytes, founders: frozenset[bytes] = FOUNDERS,
            bits: int = BITS) -> mb.Pass:
    wire = p if isinstance(p, bytes) else p.wire
    return mb.decode_pass(wire, swarm=SWARM, founders=founders, puzzle_bits=bits, now_ms=NOW)


def _chain() -> tuple[mb.Pass, mb.Pass, mb.Pass]:
    """F1 → Alice (may invite) → Bob (may invite) → Carol."""
    alice = mb.invited_pass(None, _cert(F1, ALICE, True, NOW - 30), ALICE)
    bob = mb.invited_pass(alice, _cert(ALICE, BOB, True, NOW - 20), BOB)
    carol = mb.invited_pass(bob, _cert(BOB, CAROL, False, NOW - 10), CAROL)
    return alice, bob, carol


def _refused(reason: str, fn: Callable[[], Any]) -> None:
    with pytest.raises(RecordError) as info:
        fn()
    assert info.value.reason == reason, (info.value.reason, str(info.value))


# --- round trips --------------------------------------------------------------------------

def test_a_certificate_chain_round_trips() -> None:
    alice, bob, carol = _chain()
    got = _decode(carol)
    assert (got.kind, got.member, got.since_ms) == ("invited", CAROL.public_key, NOW - 10)
    assert got.issuers == (F1.public_key, ALICE.public_key, BOB.public_key)
    assert got.inviter == BOB.public_key and not got.may_invite and got.wire == carol.wire
    assert _decode(alice).may_invite and _decode(bob).issuers[-1] == ALICE.public_key


def test_a_ticket_round_trips_and_pays_its_puzzle() -> None:
    ticket = mb.solve(EVE, SWARM, BITS, NOW)
    assert mb.puzzle_ok(SWARM, EVE.public_key, ticket.nonce, BITS)
    got = _decode(mb.ticket_pass(ticket, EVE))
    assert (got.kind, got.member, got.since_ms, got.issuers) == (
        "ticket", EVE.public_key, NOW, ())


def test_a_revocation_round_trips() -> None:
    rev = mb.revoke(F1, swarm=SWARM, target=BOB.public_key, why="spam", at_ms=NOW)
    got = mb.decode_revocation(rev.wire, swarm=SWARM, founders=FOUNDERS,
                               current_founders=FOUNDERS, now_ms=NOW)
    assert (got.target, got.issuer, got.why, got.at_ms) == (BOB.public_key, F1.public_key,
                                                            "spam", NOW)
    assert mb.revoke_key(BOB.public_key) == b"R" + BOB.public_key
    assert mb.pass_key(BOB.public_key) == b"M" + BOB.public_key


@pytest.mark.parametrize("host", ["192.0.2.7", "2001:db8::1", "spore.example.org",
                                  "a" * 63 + "." + "b" * 63])
def test_an_invitation_code_round_trips(host: str) -> None:
    inv = joining.Invitation(host, 7400, SWARM[:8], b"t" * 16)
    code = inv.encode()
    assert code.startswith("spore1-") and code == code.lower()
    assert joining.decode_invitation(code) == inv
    shouted = code.upper().replace("SPORE1-", "spore1-")
    assert joining.decode_invitation("  " + shouted + "\n") == inv
    print(f"invitation code for {host!r}: {len(code)} characters")


def test_a_mistyped_invitation_code_is_caught() -> None:
    code = joining.Invitation("192.0.2.7", 7400, SWARM[:8], b"t" * 16).encode()
    for i in range(len("spore1-"), len(code)):
        typo = code[:i] + ("a" if code[i] != "a" else "b") + code[i + 1:]
        with pytest.raises(RecordError):
            joining.decode_invitation(typo)
    for bad in ["", "spore1-", "spore2-abc", code[:-3], code + "aa", "spore1-!!!!", "x" * 900]:
        with pytest.raises(RecordError):
            joining.decode_invitation(bad)


def test_join_request_and_answer() -> None:
    token = b"k" * 16
    request = joining.join_request(CAROL, token)
    assert joining.decode_join_request(request) == (token, CAROL.public_key)
    forged = msgpack.packb([token, EVE.public_key, CAROL.sign(joining.JOIN_DOMAIN,
                                                             token + CAROL.public_key)])
    _refused("record_signature", lambda: joining.decode_join_request(forged))
    _refused("join_malformed", lambda: joining.decode_join_request(b"\x93" + b"x" * 300))
    _refused("token_size", lambda: joining.decode_join_request(joining.join_request(CAROL, b"k")))

    _, bob, _ = _chain()
    inv = joining.Invitation("192.0.2.7", 7400, SWARM[:8], token)
    answer = joining.join_answer([DNA], bob, _cert(BOB, CAROL))
    chain, parent, cert = joining.decode_join_answer(answer, invitation=inv,
                                                member=CAROL.public_key, now_ms=NOW)
    assert chain[0].hash == SWARM and parent is not None and parent.member == BOB.public_key
    assert _decode(mb.invited_pass(parent, cert, CAROL)).member == CAROL.public_key
    _refused("join_certificate", lambda: joining.decode_join_answer(
        answer, invitation=inv, member=EVE.public_key, now_ms=NOW))
    founder_answer = joining.join_answer([DNA], None, _cert(F1, CAROL))
    assert joining.decode_join_answer(founder_answer, invitation=inv, member=CAROL.public_key,
                                 now_ms=NOW)[1] is None
    other = joining.Invitation("192.0.2.7", 7400, b"\x00" * 8, token)
    _refused("join_swarm", lambda: joining.decode_join_answer(
        answer, invitation=other, member=CAROL.public_key, now_ms=NOW))
    _refused("join_malformed", lambda: joining.decode_join_answer(
        b"\x93\xc4\x01x\xc4\x00\xc4\x00", invitation=inv, member=CAROL.public_key, now_ms=NOW))


# --- typed refusals -----------------------------------------------------------------------

def test_pass_refusals() -> None:
    alice, bob, carol = _chain()
    # Eve, no founder, starts a chain
    _refused("pass_issuer", lambda: _decode(mb.invited_pass(None, _cert(EVE, CAROL), CAROL)))
    # Carol may not invite, yet signs Eve's certificate
    _refused("pass_chain", lambda: _decode(mb.invited_pass(carol, _cert(CAROL, EVE), EVE)))
    # a certificate issued by someone else than the member before it
    _refused("pass_chain", lambda: _decode(mb.invited_pass(alice, _cert(BOB, EVE), EVE)))
    # Eve shows Carol's chain as her own: the holder's signature is not Carol's
    stolen = msgpack.packb([carol.body, EVE.sign(mb.PASS_DOMAIN, carol.body)])
    _refused("pass_signature", lambda: _decode(stolen))
    _refused("pass_swarm", lambda: _decode(
        mb.invited_pass(None, _cert(F1, EVE, swarm=b"\x01" * 32), EVE)))
    _refused("pass_time", lambda: _decode(
        mb.invited_pass(None, _cert(F1, EVE, at=NOW + MAX_SKEW_MS + 1), EVE)))
    four = mb.invited_pass(mb.invited_pass(bob, _cert(BOB, CAROL, True), CAROL),
                           _cert(CAROL, EVE, True), EVE)
    assert len(_decode(four).issuers) == mb.MAX_CHAIN
    dave = Identity.from_seed(b"dave")
    _refused("pass_malformed", lambda: _decode(mb.invited_pass(four, _cert(EVE, dave), dave)))
    _refused("pass_malformed", lambda: _decode(b"\x00" * 5000))
    _refused("pass_malformed", lambda: _decode(b"junk"))


def test_ticket_refusals() -> None:
    ticket = mb.solve(EVE, SWARM, BITS, NOW)
    cheap = next(t for t in (mb.solve(EVE, SWARM, 0, NOW) for _ in range(64))
                 if not mb.puzzle_ok(SWARM, EVE.public_key, t.nonce, BITS))
    _refused("pass_puzzle", lambda: _decode(mb.ticket_pass(cheap, EVE)))
    # a swarm without a puzzle takes no tickets at all (they would be free)
    _refused("pass_puzzle", lambda: _decode(mb.ticket_pass(ticket, EVE), bits=0))
    other = mb.solve(EVE, b"\x02" * 32, BITS, NOW)
    _refused("pass_swarm", lambda: _decode(mb.ticket_pass(other, EVE)))
    # a ticket of Eve's in a pass signed by Alice
    _refused("pass_signature", lambda: _decode(msgpack.packb(
        [mb.ticket_pass(ticket, EVE).body,
         ALICE.sign(mb.PASS_DOMAIN, mb.ticket_pass(ticket, EVE).body)])))


def test_revocation_refusals() -> None:
    def decode(rev: mb.Revocation, current: frozenset[bytes] = FOUNDERS) -> mb.Revocation:
        return mb.decode_revocation(rev.wire, swarm=SWARM, founders=FOUNDERS,
                                    current_founders=current, now_ms=NOW)

    def rev(by: Identity = F1, target: Identity = BOB, why: str = "x", at: int = NOW,
            swarm: bytes = SWARM) -> mb.Revocation:
        return mb.revoke(by, swarm=swarm, target=target.public_key, why=why, at_ms=at)

    _refused("revocation_issuer", lambda: decode(rev(by=ALICE)))
    _refused("revocation_founder", lambda: decode(rev(target=F1)))
    _refused("revocation_swarm", lambda: decode(rev(swarm=b"\x03" * 32)))
    _refused("why_control", lambda: decode(rev(why="a\x1b[31m")))
    _refused("why_size", lambda: decode(rev(why="w" * 201)))
    _refused("at_ms_future", lambda: decode(rev(at=NOW + MAX_SKEW_MS + 1)))
    # a retired founder's revocation still counts; a revoked key is not a founder now
    assert decode(rev(target=F1), current=frozenset({F2.public_key})).target == F1.public_key


# --- standing -----------------------------------------------------------------------------

def _roster(membership: str = "invite", bits: int = 0,
            founders: frozenset[bytes] = FOUNDERS) -> mb.Roster:
    return mb.Roster(membership, bits, founders)


def test_invite_mode_standing_and_a_revoked_inviter() -> None:
    alice, bob, carol = _chain()
    roster = _roster()
    for p in (alice, bob, carol):
        assert roster.put_pass(_decode(p))
    assert [roster.standing(k.public_key) for k in (F1, ALICE, BOB, CAROL, EVE)] == [
        None, None, None, None, "not_member"]
    assert roster.put_revocation(mb.revoke(F1, swarm=SWARM, target=ALICE.public_key,
                                           why="lost laptop", at_ms=NOW))
    assert roster.standing(ALICE.public_key) == "revoked"
    assert roster.standing(BOB.public_key) == roster.standing(CAROL.public_key) == \
        "revoked_inviter"
    assert roster.standing(F1.public_key) is None and roster.kind(F1.public_key) == "founder"
    # a founder invites Carol again, directly: her newer pass stands
    again = mb.invited_pass(None, _cert(F1, CAROL, at=NOW), CAROL)
    assert roster.put_pass(_decode(again)) and roster.standing(CAROL.public_key) is None
    assert not roster.put_pass(_decode(carol))  # the older pass loses
    rows = {r["key"]: r for r in roster.members()}
    assert rows[ALICE.public_key.hex()]["revoked"] and \
        rows[ALICE.public_key.hex()]["why"] == "lost laptop"
    assert rows[CAROL.public_key.hex()]["inviter"] == F1.public_key.hex()
    assert rows[F1.public_key.hex()]["kind"] == "founder"
    assert rows[BOB.public_key.hex()]["standing"] == "revoked_inviter"
    assert rows[BOB.public_key.hex()]["node_id"] == hashlib.sha256(BOB.public_key).hexdigest()


def test_a_retired_founders_certificates_stay_valid() -> None:
    v2 = dna_mod.update(DNA, F1, {"founders": [F1.public_key.hex(), F2.public_key.hex()]}, 10)
    v3 = dna_mod.update(v2, F2, {"founders": [F2.public_key.hex()]}, 20)  # F1 retired
    chain = dna_mod.decode_chain(dna_mod.chain_wire([DNA, v2, v3]), SWARM)
    ever = dna_mod.founders_ever(chain)
    _, _, carol = _chain()
    assert _decode(carol, founders=ever).member == CAROL.public_key
    roster = _roster(founders=v3.founders)
    roster.put_pass(_decode(carol, founders=ever))
    assert roster.standing(CAROL.public_key) is None
    assert roster.standing(F1.public_key) == "not_member"  # no longer a founder
    # once retired, a founder can be revoked: every chain through it falls
    roster.put_revocation(mb.decode_revocation(
        mb.revoke(F2, swarm=SWARM, target=F1.public_key, why="", at_ms=NOW).wire,
        swarm=SWARM, founders=ever, current_founders=v3.founders, now_ms=NOW))
    assert roster.standing(CAROL.public_key) == "revoked_inviter"


def test_open_swarms() -> None:
    old = _roster("open", 0)  # a v1 swarm from before membership
    assert old.standing(EVE.public_key) is None
    old.put_revocation(mb.revoke(F1, swarm=SWARM, target=EVE.public_key, why="", at_ms=NOW))
    assert old.standing(EVE.public_key) == "revoked"
    puzzled = _roster("open", BITS)
    assert puzzled.standing(EVE.public_key) == "not_member"
    puzzled.put_pass(_decode(mb.ticket_pass(mb.solve(EVE, SWARM, BITS, NOW), EVE)))
    assert puzzled.standing(EVE.public_key) is None and puzzled.kind(EVE.public_key) == "ticket"
    # a ticket is no membership in an invite swarm
    invite = _roster()
    invite.put_pass(_decode(mb.ticket_pass(mb.solve(EVE, SWARM, BITS, NOW), EVE)))
    assert invite.standing(EVE.public_key) == "not_member"


def test_roster_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mb, "MAX_PASSES", 2)
    roster = _roster()
    alice, bob, carol = _chain()
    roster.put_pass(alice)
    roster.put_pass(bob)
    _refused("roster_full", lambda: roster.put_pass(carol))
    assert not roster.put_pass(alice)  # a key it holds still takes a newer pass


def test_puzzle_cost() -> None:
    """What one identity costs here (printed; the default puzzle is 20 bits)."""
    rate_n = 200_000
    prefix = hashlib.sha256(mb.PUZZLE_DOMAIN + SWARM + EVE.public_key)
    start = time.perf_counter()
    for i in range(rate_n):
        h = prefix.copy()
        h.update(i.to_bytes(8, "big"))
        h.digest()
    rate = rate_n / (time.perf_counter() - start)
    bits = dna_mod.DEFAULT_PUZZLE_BITS
    start = time.process_time()
    for seed in range(2):  # one sample each of a geometric law: only indicative
        ticket = mb.solve(Identity.from_seed(bytes([seed])), SWARM, bits, NOW)
        assert mb.puzzle_ok(SWARM, ticket.member, ticket.nonce, bits)
    per = (time.process_time() - start) / 2
    print(f"\npuzzle: {rate / 1e6:.2f} M hashes/s here; {bits} bits: {per:.2f} s CPU an "
          f"identity measured, {2 ** bits / rate:.2f} s expected")


# --- hostile fields -----------------------------------------------------------------------

def _signed(domain: bytes, fields: list[Any], signer: Identity) -> bytes:
    body = msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb([body, signer.sign(domain, body)], use_bin_type=True)  # type: ignore[no-any-return]


def _outcome(decode: Callable[[], Any]) -> Any:
    try:
        got = decode()
    except RecordError as exc:
        reason: str | None = exc.reason
    else:
        event("accepted")
        return got
    assert reason is not None and reason.isidentifier(), reason
    event(f"refused: {reason}")
    return None


def field(sane: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]
          ) -> st.SearchStrategy[Any]:
    return st.integers(0, 3).flatmap(lambda i: hostile if i == 0 else sane)


junk = st.one_of(st.integers(-(2**63), 2**64 - 1), st.sampled_from([2**63, -1, 2**64 - 1]),
                 st.booleans(), st.floats(), st.none(), st.binary(max_size=40),
                 st.text(max_size=8), st.lists(st.integers(-5, 5), max_size=3))
times = field(st.integers(0, NOW + MAX_SKEW_MS), st.one_of(
    st.sampled_from([NOW + MAX_SKEW_MS + 1, 2**63 - 1]), junk))


def blob(n: int, *sane: bytes) -> st.SearchStrategy[Any]:
    good = st.sampled_from(sane) if sane else st.binary(min_size=n, max_size=n)
    return field(good, st.one_of(st.binary(max_size=2 * n), junk))


signers = st.sampled_from([F1, ALICE, EVE])
swarms = blob(32, SWARM)
keys = blob(32, F1.public_key, ALICE.public_key, EVE.public_key)
bools = field(st.booleans(), junk)
tags = field(st.just(1), junk)


@EXAMPLES
@given(swarm=swarms, member=keys, issuer=keys, may=bools, at=times, ver=tags,
       signer=signers, holder=signers, extra=st.lists(junk, max_size=1))
def test_hostile_certificate_passes(swarm: Any, member: Any, issuer: Any, may: Any, at: Any,
                                    ver: Any, signer: Identity, holder: Identity,
                                    extra: list[Any]) -> None:
    cert = _signed(mb.CERT_DOMAIN, ["cert", ver, swarm, member, issuer, may, at, *extra],
                   signer)
    p = _signed(mb.PASS_DOMAIN, ["pass", 1, "invited", [cert]], holder)
    got = _outcome(lambda: _decode(p))
    if got is not None:
        assert got.member == holder.public_key == member and got.issuers == (F1.public_key,)
        assert signer is F1 and 0 <= got.since_ms <= NOW + MAX_SKEW_MS
    _outcome(lambda: mb.decode_certificate(cert, now_ms=NOW))


@EXAMPLES
@given(swarm=swarms, member=keys, nonce=blob(8), at=times, ver=tags, signer=signers,
       bits=st.sampled_from([0, 1, 2, 32]), kind=field(st.just("ticket"), junk))
def test_hostile_ticket_passes(swarm: Any, member: Any, nonce: Any, at: Any, ver: Any,
                               signer: Identity, bits: int, kind: Any) -> None:
    ticket = _signed(mb.TICKET_DOMAIN, ["ticket", ver, swarm, member, nonce, at], signer)
    p = _signed(mb.PASS_DOMAIN, ["pass", 1, kind, [ticket]], signer)
    got = _outcome(lambda: _decode(p, bits=bits))
    if got is not None:
        assert bits > 0 and got.member == signer.public_key and got.ticket is not None
        assert mb.puzzle_ok(SWARM, got.member, got.ticket.nonce, bits)


@EXAMPLES
@given(swarm=swarms, target=keys, issuer=keys, ver=tags, at=times, signer=signers,
       why=field(st.text(max_size=200), st.one_of(
           st.text(st.characters(max_codepoint=0x9f), max_size=20),
           st.text(min_size=201, max_size=300), junk)))
def test_hostile_revocations(swarm: Any, target: Any, issuer: Any, ver: Any, at: Any,
                             signer: Identity, why: Any) -> None:
    wire = _signed(mb.REVOKE_DOMAIN, ["revoke", ver, swarm, target, issuer, why, at], signer)
    got = _outcome(lambda: mb.decode_revocation(
        wire, swarm=SWARM, founders=FOUNDERS, current_founders=FOUNDERS, now_ms=NOW))
    if got is not None:
        assert got.issuer == F1.public_key and got.target != F1.public_key
        assert len(got.why) <= 200 and 0 <= got.at_ms <= NOW + MAX_SKEW_MS


@EXAMPLES
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_hostile_bytes_and_codes(data: bytes) -> None:
    _outcome(lambda: _decode(data))
    _outcome(lambda: joining.decode_join_request(data))
    _outcome(lambda: joining.decode_invitation("spore1-" + data.hex()))
    _outcome(lambda: joining.decode_invitation(data.decode("latin-1")))
    inv = joining.Invitation("192.0.2.7", 1, SWARM[:8], b"t" * 16)
    _outcome(lambda: joining.decode_join_answer(data, invitation=inv, member=EVE.public_key,
                                           now_ms=NOW))


@EXAMPLES
@given(host=st.one_of(st.sampled_from(["fe80::1%eth0", "a" * 254, "a\nb", "127.1", "", "-x"]),
                      st.text(max_size=40)),
       port=st.integers(0, 65535), token=st.binary(min_size=16, max_size=16))
def test_hostile_invitation_hosts(host: str, port: int, token: bytes) -> None:
    try:
        code = joining.Invitation(host, port, SWARM[:8], token).encode()
    except (ValueError, UnicodeEncodeError, OverflowError):
        return  # the inviter's own mistake: its CLI checks the host first
    got = _outcome(lambda: joining.decode_invitation(code))
    if got is not None:
        assert got.port == port > 0 and got.token == token


# --- order independence -------------------------------------------------------------------

def _items() -> list[mb.Pass | mb.Revocation]:
    alice, bob, carol = _chain()
    return [alice, bob, carol, mb.invited_pass(None, _cert(F1, CAROL, at=NOW - 5), CAROL),
            mb.invited_pass(None, _cert(F1, EVE, at=NOW - 1), EVE),
            mb.revoke(F1, swarm=SWARM, target=BOB.public_key, why="a", at_ms=NOW),
            mb.revoke(F1, swarm=SWARM, target=BOB.public_key, why="b", at_ms=NOW),
            mb.revoke(F1, swarm=SWARM, target=ALICE.public_key, why="c", at_ms=NOW - 9),
            mb.ticket_pass(mb.solve(EVE, SWARM, BITS, NOW - 3), EVE)]


ITEMS = _items()


@EXAMPLES
@given(st.permutations(ITEMS), st.lists(st.integers(0, len(ITEMS) - 1), max_size=20),
       st.sampled_from([("invite", 0), ("open", 0), ("open", BITS)]))
def test_the_roster_is_the_same_in_any_order(order: list[Any], picks: list[int],
                                             mode: tuple[str, int]) -> None:
    """The same items (some delivered again), in any order: the same view."""
    def view(items: list[Any]) -> list[dict[str, object]]:
        roster = _roster(*mode)
        for item in items:
            if isinstance(item, mb.Pass):
                roster.put_pass(item)
            else:
                roster.put_revocation(item)
        return roster.members()

    assert view(order + [ITEMS[i] for i in picks]) == view(ITEMS)
