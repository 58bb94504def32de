"""Invitations: the pending-invitation store on real files, the API's routes
for invitations, members and revocations (its gate on a fake spore with the
same contract), and `spore init --join CODE` against a fake inviter that
answers with p2pnode.membership's real codecs, in a real CLI process."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from p2pnode import dna as dna_mod
from p2pnode import joining
from p2pnode import membership as ms
from p2pnode.api import make_app
from p2pnode.errors import NotAllowed, StateError, WrongMode
from p2pnode.identity import Identity, load_or_create
from p2pnode.invites import MAX_ENTRIES, MAX_PENDING, Invites, InvitesFull
from p2pnode.records import RecordError
from tests.conftest import Daemon, free_port, make_daemon

NOW = 1_800_000_000_000
DAY_S = 86_400


# -- the store ---------------------------------------------------------------------------
def test_a_token_is_redeemed_once_and_says_whether_it_may_invite(tmp_path: Path) -> None:
    store = Invites(tmp_path / "invites.json")
    plain = store.create(may_invite=False, ttl_s=DAY_S, now_ms=NOW)
    inviter = store.create(may_invite=True, ttl_s=DAY_S, now_ms=NOW)
    assert len(plain) == len(inviter) == 16 and plain != inviter
    assert store.redeem(plain, NOW + 1) is False
    assert store.redeem(inviter, NOW + 2) is True
    with pytest.raises(RecordError) as used:
        store.redeem(plain, NOW + 3)
    assert used.value.reason == "invite_used"


def test_an_expired_or_unknown_token_is_refused_by_reason(tmp_path: Path) -> None:
    store = Invites(tmp_path / "invites.json")
    token = store.create(may_invite=False, ttl_s=60, now_ms=NOW)
    with pytest.raises(RecordError) as expired:
        store.redeem(token, NOW + 60_000)
    assert expired.value.reason == "invite_expired"
    with pytest.raises(RecordError) as unknown:
        store.redeem(os.urandom(16), NOW)
    assert unknown.value.reason == "invite_unknown"


def test_the_file_holds_no_token_is_owner_only_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "invites.json"
    token = Invites(path).create(may_invite=True, ttl_s=DAY_S, now_ms=NOW)
    raw = path.read_bytes()
    assert token.hex().encode() not in raw and token not in raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Invites(path).redeem(token, NOW + 1) is True  # a new process, the same file
    with pytest.raises(RecordError) as used:
        Invites(path).redeem(token, NOW + 2)
    assert used.value.reason == "invite_used"


def test_a_missing_file_is_no_invitation(tmp_path: Path) -> None:
    assert Invites(tmp_path / "invites.json").pending(NOW) == 0


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", b'{"version": 1}', b'{"version": 2, "invites": []}',
    b'{"version": 1, "invites": [{"digest": "zz", "expires_ms": 1, "may_invite": false, '
    b'"used_ms": null}]}',
    b'{"version": 1, "invites": [{"digest": "' + b"a" * 64 + b'", "expires_ms": true, '
    b'"may_invite": false, "used_ms": null}]}',
])
def test_a_corrupt_file_is_a_state_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "invites.json"
    path.write_bytes(content)
    with pytest.raises(StateError, match=str(path)):
        Invites(path)
    assert path.read_bytes() == content  # not dropped: the invitations in it are kept


def test_pending_invitations_are_bounded(tmp_path: Path) -> None:
    store = Invites(tmp_path / "invites.json")
    tokens = [store.create(may_invite=False, ttl_s=DAY_S, now_ms=NOW)
              for _ in range(MAX_PENDING)]
    with pytest.raises(InvitesFull):
        store.create(may_invite=False, ttl_s=DAY_S, now_ms=NOW)
    store.redeem(tokens[0], NOW)  # a used one makes room
    store.create(may_invite=False, ttl_s=DAY_S, now_ms=NOW)
    later = NOW + DAY_S * 1000  # and expiry does
    assert store.pending(later) == 0
    store.create(may_invite=False, ttl_s=DAY_S, now_ms=later)


def test_the_file_stays_bounded_with_used_ones_forgotten_first(tmp_path: Path) -> None:
    path = tmp_path / "invites.json"
    store = Invites(path)
    for i in range(MAX_ENTRIES + 50):
        store.redeem(store.create(may_invite=False, ttl_s=DAY_S, now_ms=NOW + i), NOW + i)
    pending = store.create(may_invite=False, ttl_s=DAY_S, now_ms=NOW + 2000)
    assert len(json.loads(path.read_bytes())["invites"]) <= MAX_ENTRIES
    assert Invites(path).redeem(pending, NOW + 2001) is False


# -- the API, on a fake spore with Spore's membership contract -----------------------------
class FakeSpore:
    """What the API calls on Spore for membership, with its errors."""

    def __init__(self, *, founder: bool = True, membership: str = "invite") -> None:
        self.identity = Identity.from_seed(b"api")
        founders = [self.identity.public_key.hex()] if founder else ["00" * 32]
        self.dna = type("D", (), {"fields": {"founders": founders},
                                  "membership": membership})()
        self.members = None
        self.calls: list[tuple[str, Any]] = []

    async def invite(self, *, may_invite: bool, ttl_s: int) -> dict[str, Any]:
        if self.dna.membership != "invite":  # as p2pnode.members.Members.invite
            raise WrongMode("this swarm is open")
        if self.identity.public_key.hex() not in self.dna.fields["founders"]:
            raise NotAllowed("this spore may not invite")
        self.calls.append(("invite", (may_invite, ttl_s)))
        return {"code": "spore1-x", "expires_ms": NOW + ttl_s * 1000, "may_invite": may_invite}

    def members_list(self) -> list[dict[str, Any]]:
        return [{"node_id": "ab" * 32, "key": "cd" * 32, "kind": "founder"}]

    async def revoke(self, target_hex: str, why: str) -> dict[str, Any]:
        if self.identity.public_key.hex() not in self.dna.fields["founders"]:
            raise NotAllowed("only a founder can revoke a member")
        self.calls.append(("revoke", (target_hex, why)))
        return {"revoked": target_hex, "why": why, "at_ms": NOW}


TOKEN = "t0ken"


async def _calls(spore: FakeSpore, requests: list[tuple[str, str, Any, dict[str, str]]]
                 ) -> list[tuple[int, Any]]:
    app = make_app(spore, TOKEN, loopback_only=True)  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        out = []
        for method, path, body, headers in requests:
            resp = await client.request(method, path, json=body, headers=headers)
            out.append((resp.status, await resp.json()))
        return out


def api(spore: FakeSpore, method: str, path: str, body: Any = None, *, token: bool = True,
        headers: dict[str, str] | None = None) -> tuple[int, Any]:
    sent = {**({"Authorization": f"Bearer {TOKEN}"} if token else {}), **(headers or {})}
    return asyncio.run(_calls(spore, [(method, path, body, sent)]))[0]


@pytest.mark.parametrize("path", ["/v1/invites", "/v1/revocations"])
def test_membership_changes_need_the_token_on_loopback_too(path: str) -> None:
    spore = FakeSpore()
    body = {"node_id": "ab" * 32} if path == "/v1/revocations" else {}
    code, out = api(spore, "POST", path, body, token=False)
    assert code == 401 and "token" in out["error"] and not spore.calls
    code, _ = api(spore, "POST", path, body, headers={"Origin": "https://evil.example"})
    assert code == 403 and not spore.calls  # a page cannot, even holding a token


def test_an_invitation_is_made_with_defaults_and_strict_fields() -> None:
    spore = FakeSpore()
    code, out = api(spore, "POST", "/v1/invites", {})
    assert code == 201 and out["code"] == "spore1-x" and out["may_invite"] is False
    assert spore.calls == [("invite", (False, DAY_S))]
    assert api(spore, "POST", "/v1/invites", {"may_invite": True, "ttl_s": 60})[0] == 201
    for bad in ({"ttl_s": 59}, {"ttl_s": 31 * DAY_S}, {"ttl_s": "1h"}, {"may_invite": 1},
                {"uses": 2}):
        code, out = api(spore, "POST", "/v1/invites", bad)
        assert code == 400 and out["error"], bad
    assert len(spore.calls) == 2


def test_who_may_not_invite_or_revoke_gets_403_and_open_swarms_409() -> None:
    member = FakeSpore(founder=False)
    assert api(member, "POST", "/v1/invites", {})[0] == 403
    assert api(member, "POST", "/v1/revocations", {"node_id": "ab"})[0] == 403
    code, out = api(FakeSpore(founder=False, membership="open"), "POST", "/v1/invites", {})
    assert code == 409 and out["error"]


def test_a_revocation_is_checked_then_passed_on() -> None:
    spore = FakeSpore()
    code, out = api(spore, "POST", "/v1/revocations", {"node_id": "ab12", "why": "lost phone"})
    assert code == 201 and out["revoked"] == "ab12"
    for bad in ({"node_id": "AB12"}, {"node_id": "xyz"}, {"node_id": "a" * 65}, {},
                {"node_id": "ab", "why": "two\nlines"}, {"node_id": "ab", "why": "w" * 201},
                {"node_id": "ab", "why": "\u202eevil"}):
        assert api(spore, "POST", "/v1/revocations", bad)[0] == 400, bad
    assert spore.calls == [("revoke", ("ab12", "lost phone"))]


def test_members_are_listed_with_the_mode_without_a_token_on_loopback() -> None:
    code, out = api(FakeSpore(), "GET", "/v1/members", token=False)
    assert code == 200 and out["membership"] == "invite" and out["members"][0]["kind"]


# -- spore init --join CODE, against a fake inviter ----------------------------------------
class Inviter:
    """A founder's join route with the real codecs: one token, used once."""

    def __init__(self, *, refuse: tuple[int, dict[str, str]] | None = None,
                 other_swarm: bool = False, busy: int = 0) -> None:
        self.founder = Identity.from_seed(b"founder")
        self.dna = self._found("home")
        answered = self._found("elsewhere") if other_swarm else self.dna
        self.token = os.urandom(16)
        self.refuse = refuse
        self.answered = answered
        self.joined: list[bytes] = []
        self.busy = busy  # answers 429 (retry at once) this many times first

    def _found(self, name: str) -> dna_mod.Dna:
        return dna_mod.found(self.founder, swarm=name, encoder_name="e", encoder_sha256="0" * 64,
                             dim=384, created_ms=int(time.time() * 1000))

    def answer(self, body: bytes) -> tuple[int, bytes]:
        if self.busy:
            self.busy -= 1
            return 429, b'{"error": "busy", "reason": "rate_limited"}'
        if self.refuse is not None:
            return self.refuse[0], json.dumps(self.refuse[1]).encode()
        token, key = joining.decode_join_request(body)
        if token != self.token or key in self.joined:
            return 403, b'{"error": "used", "reason": "invite_used"}'
        self.joined.append(key)
        cert = ms.issue(self.founder, swarm=self.answered.swarm_id, member=key,
                        may_invite=False, issued_ms=int(time.time() * 1000))
        return 200, joining.join_answer([self.answered], None, cert)


@pytest.fixture
def inviter_at() -> Iterator[tuple[ThreadingHTTPServer, list[Inviter]]]:
    held: list[Inviter] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, reply = held[0].answer(body) if self.path == "/peer/v1/join" else (404, b"")
            self.send_response(status)
            if status == 429:  # at once while busy; an hour (over the CLI's patience) else
                self.send_header("Retry-After", "0" if held[0].refuse is None else "3600")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, held
    server.shutdown()
    server.server_close()


def _code(inv: Inviter, port: int) -> str:
    return joining.Invitation("127.0.0.1", port, inv.dna.swarm_id[:8], inv.token).encode()


def test_joining_by_code_keeps_the_dna_chain_the_pass_and_the_inviter(
        tmp_path: Path, inviter_at: tuple[ThreadingHTTPServer, list[Inviter]]) -> None:
    server, held = inviter_at
    held.append(Inviter())
    port = server.server_address[1]
    joiner = make_daemon(tmp_path / "j")
    out = joiner.cli_json("init", "--join", _code(held[0], port))
    assert out["swarm_id"] == held[0].dna.swarm_id.hex() and out["invited"]
    assert out["peers"] == [f"127.0.0.1:{port}"]
    assert f"127.0.0.1:{port}" in (joiner.config_dir / "config.toml").read_text()
    me, _ = load_or_create(joiner.state_dir)
    assert held[0].joined == [me.public_key]
    pass_file = joiner.state_dir / "member.pass"
    assert stat.S_IMODE(pass_file.stat().st_mode) == 0o600
    own = ms.decode_pass(pass_file.read_bytes(), swarm=held[0].dna.swarm_id,
                         founders=held[0].dna.founders, puzzle_bits=0,
                         now_ms=int(time.time() * 1000))
    assert own.member == me.public_key and own.inviter == held[0].founder.public_key
    assert dna_mod.load_chain(joiner.state_dir)[-1].hash == held[0].dna.hash
    again = joiner.cli("init", "--join", _code(held[0], port))  # the token is spent
    assert again.returncode == 1 and "invite_used" in again.stderr


def test_an_invitation_file_works_as_the_code(
        tmp_path: Path, inviter_at: tuple[ThreadingHTTPServer, list[Inviter]]) -> None:
    server, held = inviter_at
    held.append(Inviter())
    file = tmp_path / "invite.txt"
    file.write_text(f"# from alice\n{_code(held[0], server.server_address[1])}\n")
    assert make_daemon(tmp_path / "j").cli_json("init", "--join", str(file))["invited"]


@pytest.mark.parametrize(("refusal", "said"), [
    ((403, {"error": "this invitation has expired", "reason": "invite_expired"}),
     "refused the invitation: invite_expired"),
    ((429, {"error": "slow down", "reason": "rate_limited"}), "try again in a minute"),
])
def test_a_refused_invitation_says_why_in_one_line(
        tmp_path: Path, inviter_at: tuple[ThreadingHTTPServer, list[Inviter]],
        refusal: tuple[int, dict[str, str]], said: str) -> None:
    server, held = inviter_at
    held.append(Inviter(refuse=refusal))
    joiner = make_daemon(tmp_path / "j")
    res = joiner.cli("init", "--join", _code(held[0], server.server_address[1]))
    assert res.returncode == 1 and said in res.stderr and res.stderr.count("\n") == 1
    assert not (joiner.state_dir / "dna.bin").exists()
    assert not (joiner.state_dir / "member.pass").exists()


def test_a_busy_inviter_is_asked_again(
        tmp_path: Path, inviter_at: tuple[ThreadingHTTPServer, list[Inviter]]) -> None:
    server, held = inviter_at
    held.append(Inviter(busy=2))
    joiner = make_daemon(tmp_path / "j")
    assert joiner.cli_json("init", "--join", _code(held[0], server.server_address[1]))["invited"]
    assert held[0].busy == 0 and len(held[0].joined) == 1


def test_an_answer_for_another_swarm_is_refused(
        tmp_path: Path, inviter_at: tuple[ThreadingHTTPServer, list[Inviter]]) -> None:
    server, held = inviter_at
    held.append(Inviter(other_swarm=True))
    joiner = make_daemon(tmp_path / "j")
    res = joiner.cli("init", "--join", _code(held[0], server.server_address[1]))
    assert res.returncode == 1 and "another swarm" in res.stderr
    assert not (joiner.state_dir / "dna.bin").exists()


def test_an_unreachable_inviter_is_one_clear_line(tmp_path: Path) -> None:
    code = joining.Invitation("127.0.0.1", free_port(), b"\1" * 8, b"\2" * 16).encode()
    res = make_daemon(tmp_path / "j").cli("init", "--join", code)
    assert res.returncode == 1 and "cannot reach the inviter at 127.0.0.1:" in res.stderr
    assert res.stderr.count("\n") == 1


def test_a_state_dir_of_another_swarm_does_not_spend_the_invitation(
        tmp_path: Path, inviter_at: tuple[ThreadingHTTPServer, list[Inviter]]) -> None:
    server, held = inviter_at
    held.append(Inviter())
    joiner = make_daemon(tmp_path / "j")
    joiner.state_dir.mkdir(parents=True)
    other = Identity.from_seed(b"other")
    dna_mod.save(joiner.state_dir, dna_mod.found(
        other, swarm="mine", encoder_name="e", encoder_sha256="0" * 64, dim=384, created_ms=1))
    res = joiner.cli("init", "--join", _code(held[0], server.server_address[1]))
    assert res.returncode == 1 and "already belongs to swarm mine" in res.stderr
    assert held[0].joined == []


@pytest.mark.parametrize(("given", "said"), [
    ("spore1-abc", "not a valid invitation code"),
    ("spore1-" + "a" * 60, "mistyped or cut short"),
    ("no-such-file-nor-code", "nor is it an invitation code"),
])
def test_a_bad_code_is_a_usage_error(daemon: Daemon, given: str, said: str) -> None:
    res = daemon.cli("init", "--join", given)
    assert res.returncode == 2 and said in res.stderr


# -- the CLI's own checks, before any call ----------------------------------------------
@pytest.mark.parametrize(("args", "said"), [
    (("invite", "--ttl", "30s"), "1 minute to 30 days"),
    (("invite", "--ttl", "31d"), "1 minute to 30 days"),
    (("invite", "--ttl", "soon"), "not a duration"),
    (("init", "--open", "--join", "x"), "--open founds an open swarm"),
    (("revoke", "not-hex"), "not a node id"),
])
def test_membership_usage_errors_are_exit_2(daemon: Daemon, args: tuple[str, ...],
                                            said: str) -> None:
    res = daemon.cli(*args)
    assert res.returncode == 2 and said in res.stderr, res.stderr


def test_invite_and_members_without_a_daemon_are_exit_69(daemon: Daemon) -> None:
    assert daemon.cli("invite").returncode == 69
    assert daemon.cli("members").returncode == 69
