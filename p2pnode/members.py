"""Who is in the swarm, as this daemon sees it: the roster, our own pass, the
invitations we handed out, and the founders' revocations (DESIGN.md 5b).

The records and the rules of standing are p2pnode.membership's (pure); this
is their owner in the daemon. It checks the gossiped passes and revocations
(`validators`: they feed the roster as they are accepted, so a new member's
pass admits its votes in the same delta), answers `standing(key)` for the
DHT, peer HTTP and gossip, redeems invitations (the peer route ``join``),
and signs what a founder or an inviting member asks for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pnode import dna as dna_mod
from p2pnode import joining
from p2pnode import membership as ms
from p2pnode.errors import ConfigError, NotAllowed, NotReady, StateError, WrongMode
from p2pnode.files import write_atomic
from p2pnode.gossip import KIND_PASS, KIND_REVOKE, GossipStore, Validator
from p2pnode.identity import Identity
from p2pnode.invites import Invites
from p2pnode.records import RecordError

log = logging.getLogger("spore.members")

PASS_FILE = "member.pass"
INVITES_FILE = "invites.json"
MAX_TTL_S = 30 * 86_400


class Members:
    def __init__(self, *, identity: Identity, dna: Callable[[], dna_mod.Dna],
                 chain: Callable[[], list[dna_mod.Dna]], state_dir: Path | None,
                 now_ms: Callable[[], int], first: dna_mod.Dna,
                 gossip: Callable[[], GossipStore | None] = lambda: None,
                 address: Callable[[], tuple[str, int] | None] = lambda: None,
                 on_revoked: Callable[[bytes], None] = lambda key: None) -> None:
        """`dna` and `chain` read the spore's current ones (it may be built
        after this); `first` is the DNA it starts with. `gossip`: the store
        our revocations go to (built after this: it checks passes with our
        validators; None: revocations stay here); `address`: where peers
        reach us, for invitations (None: not listening yet); `on_revoked`:
        told of each member revoked."""
        self.identity, self._dna, self._chain, self.now_ms = identity, dna, chain, now_ms
        self.state_dir = state_dir
        self._gossip, self.address, self.on_revoked = gossip, address, on_revoked
        self.counters: dict[str, int] = {}
        self.roster = ms.Roster(first.membership, first.puzzle_bits, first.founders)
        self.invites = None if state_dir is None else Invites(state_dir / INVITES_FILE)
        self.own: ms.Pass | None = None  # load_own(), once the spore is built

    # --- the view --------------------------------------------------------------------

    def _founders(self) -> frozenset[bytes]:
        return self._dna().founders

    def dna_changed(self) -> None:
        """A new DNA version: founders may have come or gone."""
        dna = self._dna()
        self.roster.reset_dna(dna.membership, dna.puzzle_bits, self._founders())

    def priced(self) -> bool:
        """Whether voices are weighed by trust: every swarm but an open one
        with no puzzle (one from before membership: all voices alike)."""
        dna = self._dna()
        return dna.membership != "open" or dna.puzzle_bits > 0

    def standing(self, key: bytes) -> str | None:
        return self.roster.standing(key)

    def own_pass(self) -> bytes | None:
        return None if self.own is None else self.own.wire

    def load_own(self) -> ms.Pass | None:
        if self.state_dir is None:
            return None
        path = self.state_dir / PASS_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            self.own = self._decode_pass(data)
            return self.own
        except RecordError as exc:
            raise StateError(f"{path}: not a pass of this swarm ({exc}); join again with a "
                             "new invitation (`spore invite` on a member)") from exc

    def save_own(self, p: ms.Pass) -> None:
        assert self.state_dir is not None
        write_atomic(self.state_dir / PASS_FILE, p.wire, private=True)
        self.own = p

    def _decode_pass(self, data: bytes) -> ms.Pass:
        dna = self._dna()
        return ms.decode_pass(data, swarm=dna.swarm_id,
                              founders=dna_mod.founders_ever(self._chain()),
                              puzzle_bits=dna.puzzle_bits, now_ms=self.now_ms())

    def needs_ticket(self) -> bool:
        """An open swarm that prices identities, and we hold no ticket yet."""
        dna = self._dna()
        return (dna.membership == "open" and dna.puzzle_bits > 0 and self.own is None
                and self.identity.public_key not in self._founders())

    def solve_ticket(self) -> ms.Pass:
        """Pay the swarm's puzzle for our key (seconds of CPU: run off the loop)."""
        dna = self._dna()
        ticket = ms.solve(self.identity, dna.swarm_id, dna.puzzle_bits, self.now_ms())
        return self._decode_pass(ms.ticket_pass(ticket, self.identity).wire)

    # --- gossip ------------------------------------------------------------------------

    def validators(self) -> dict[bytes, Validator]:
        def pass_item(key: bytes, item: bytes, now_ms: int) -> tuple[int, Any]:
            p = self._decode_pass(item)
            if key != ms.pass_key(p.member):
                raise RecordError("pass_key", "pass under a wrong key")
            self.roster.put_pass(p)
            return p.since_ms, p

        def revoke_item(key: bytes, item: bytes, now_ms: int) -> tuple[int, Any]:
            dna = self._dna()
            r = ms.decode_revocation(item, swarm=dna.swarm_id,
                                     founders=dna_mod.founders_ever(self._chain()),
                                     current_founders=self._founders(), now_ms=now_ms)
            if key != ms.revoke_key(r.target):
                raise RecordError("revoke_key", "revocation under a wrong key")
            if not self.roster.is_revoked(r.target):
                self.roster.put_revocation(r)
                self.on_revoked(r.target)
            return r.at_ms, r

        return {KIND_PASS: pass_item, KIND_REVOKE: revoke_item}

    # --- what a member may do ------------------------------------------------------------

    def _may_invite(self) -> bool:
        me = self.identity.public_key
        return me in self._founders() or (self.own is not None and self.own.may_invite
                                          and self.standing(me) is None)

    def invite(self, *, may_invite: bool, ttl_s: int) -> dict[str, Any]:
        if self.invites is None:
            raise StateError("this spore keeps no state directory: it cannot invite")
        if self._dna().membership != "invite":
            raise WrongMode("this swarm is open: anyone with its DNA file joins "
                             "(`spore dna export`); invitations are for invite swarms")
        if not self._may_invite():
            raise NotAllowed("this spore may not invite: only founders and members a "
                             "founder allowed to (`spore invite --may-invite`) can")
        if not 60 <= ttl_s <= MAX_TTL_S:
            raise ConfigError(f"ttl_s must be 60..{MAX_TTL_S}, got {ttl_s}")
        where = self.address()
        if where is None:
            raise NotReady("the peer service is not listening yet: try again in a moment")
        now = self.now_ms()
        token = self.invites.create(may_invite=may_invite, ttl_s=ttl_s, now_ms=now)
        code = joining.Invitation(where[0], where[1], self._dna().swarm_id[:8], token).encode()
        self._count("invites_made")
        return {"code": code, "expires_ms": now + ttl_s * 1000, "may_invite": may_invite}

    async def join(self, body: bytes, peer: str) -> bytes:
        """Redeem an invitation (the peer route ``join``): a certificate for the
        joiner's key, our own pass it chains to, and the DNA chain to check
        both by. The joiner signs its pass itself and gossips it (a pass is
        its holder's: no inviter can replace a member's pass)."""
        token, key = joining.decode_join_request(body)  # checked first, whoever we are
        if self.invites is None or not self._may_invite():
            raise RecordError("invite_unknown", "this spore hands out no invitations")
        may_invite = self.invites.redeem(token, self.now_ms())
        cert = ms.issue(self.identity, swarm=self._dna().swarm_id, member=key,
                        may_invite=may_invite, issued_ms=self.now_ms())
        parent = None if self.identity.public_key in self._founders() else self.own
        self._count("invites_redeemed")
        log.info("invited %s… into the swarm (from %s)", key.hex()[:16], peer)
        return joining.join_answer(self._chain(), parent, cert)

    def revoke(self, target_hex: str, why: str) -> dict[str, Any]:
        me = self.identity.public_key
        if me not in self._founders():
            raise NotAllowed("only a founder can revoke a member")
        target = self._target(target_hex)
        if target in self._founders():
            raise ConfigError("that key is a founder: retire it by a DNA update first "
                              "(`spore dna update --founders …`)")
        r = ms.revoke(self.identity, swarm=self._dna().swarm_id, target=target, why=why,
                      at_ms=self.now_ms())
        if (store := self._gossip()) is not None:
            store.offer({ms.revoke_key(target): r.wire})
        else:
            self.roster.put_revocation(r)
        return {"revoked": target.hex(), "why": why, "at_ms": r.at_ms}

    def _target(self, given: str) -> bytes:
        """A member's public key or node id (both 64 hex digits; the node id
        is the key's SHA-256), or a prefix of either that names one known
        member; a whole key no member holds is taken as given (a revocation
        may come before the key's pass does)."""
        text = given.strip().lower()
        if not text or any(c not in "0123456789abcdef" for c in text) or len(text) > 64:
            raise ConfigError(f"not a node id or public key: {given!r}")
        found = list(dict.fromkeys(
            bytes.fromhex(str(m["key"])) for m in self.roster.members()
            if str(m["key"]).startswith(text) or str(m["node_id"]).startswith(text)))
        if len(found) != 1 and len(text) == 64:
            return bytes.fromhex(text)
        if len(found) != 1:
            raise ConfigError(f"{given!r} names {len(found)} known members; give the whole "
                              "public key (spore members --json)")
        return found[0]

    def members(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self.roster.members()]

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def status(self) -> dict[str, Any]:
        me = self.identity.public_key
        return {"membership": self._dna().membership, "standing": self.standing(me) or "member",
                "kind": self.roster.kind(me), "may_invite": self._may_invite(),
                "members": len(self.roster.members()), **self.counters}
