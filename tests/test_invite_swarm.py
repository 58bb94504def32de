"""Invited swarms end to end, with real daemons on loopback and the real CLI:
`spore invite` on the founder, `spore init --join CODE` (or the invitation
file) on a new device, the new member seen by `spore members`, a spent code
refused by reason, `spore revoke` by the founder; who may not invite is told so."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, make_daemon, stop_all, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def spores(tmp_path: Path) -> Iterator[list[Daemon]]:
    made = [make_daemon(tmp_path / name) for name in ("founder", "b", "c")]
    yield made
    stop_all(made)


def _member(d: Daemon, node_id: str) -> dict[str, Any] | None:
    rows = d.cli_json("members")["members"]
    return next((m for m in rows if m["node_id"] == node_id), None)


def test_an_invited_device_joins_and_a_founder_revokes_it(spores: list[Daemon],
                                                          tmp_path: Path) -> None:
    founder, b, c = spores
    assert founder.cli_json("init", "--swarm", "family")["membership"] == "invite"
    founder.start()
    made = founder.cli_json("invite", "--ttl", "1h")
    assert made["code"].startswith("spore1-") and not made["may_invite"]

    joined = b.cli_json("init", "--join", made["code"])
    assert joined["invited"] and joined["swarm"] == "family"
    assert joined["peers"] == [founder.dht]
    spent = c.cli("init", "--join", made["code"])
    assert spent.returncode == 1 and "invite_used" in spent.stderr, spent.stderr

    b.start()
    wait_for(lambda: (_member(founder, joined["node_id"]) or {}).get("kind") == "invited",
             60, "the founder to see b's pass")
    assert founder.cli("members").stdout.count(joined["node_id"][:16]) == 1

    refused = b.cli("invite")  # b was not allowed to invite
    assert refused.returncode == 1 and "may not invite" in refused.stderr

    file = tmp_path / "for-c.invite"
    founder.cli("invite", "--file", str(file), check=True)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert c.cli_json("init", "--join", str(file))["invited"]

    gone = founder.cli_json("revoke", joined["node_id"][:12], "--why", "lost the phone")
    assert gone["why"] == "lost the phone"
    row = _member(founder, joined["node_id"])
    assert row is not None and row["revoked"] and row["why"] == "lost the phone"
    assert "lost the phone" in founder.cli("members").stdout


def test_an_open_swarm_hands_out_no_invitations(spores: list[Daemon]) -> None:
    founder = spores[0]
    assert founder.cli_json("init", "--swarm", "town", "--open")["membership"] == "open"
    founder.start()
    res = founder.cli("invite")
    assert res.returncode == 1 and "open" in res.stderr
    assert founder.cli_json("members")["membership"] == "open"

