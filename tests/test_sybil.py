"""A Sybil attacker against a swarm (real processes on loopback).

Open mode: a founder and two spores that paid the puzzle; a fact and a
distractor that the encoder ranks above it. The founder and one spore rate
the distractor down and the fact up for the question. An attacker process
(scripts/bench/_sybil.py) mints 50 puzzle-paying identities, learns those
votes by pulling the spores' gossip and answers each with 50 votes against
it, in signed deltas. Its passes and votes are accepted (it paid), yet the
rated-up fact stays top-1 on every spore, the one that never rated it too:
the attacker's fresh keys weigh the floor, and all such voices on a memory
weigh a quarter of a voice together. In an invite swarm the same attacker,
holding the DNA file, gets nothing accepted: every request refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents import trust
from p2pnode.regions import LOW_VOICES_CAP
from tests.conftest import Daemon, invite_into, make_daemon, wait_for

ATTACKER = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "_sybil.py"
K = 50
BITS = 12
QUESTION = "How do I change the default text editor on Debian?"
FACT = "Run update-alternatives --config editor and pick the editor you want as the default."
DISTRACTOR = "The default text editor on Debian is nano; vim and emacs can be installed too."
FILLERS = [
    "The Debian installer asks for a root password and creates a first user account.",
    "Apt keeps downloaded packages in /var/cache/apt/archives until apt clean removes them.",
]
LOOPBACK = {"SPORE_GOSSIP_INTERVAL": "0.5", "SPORE_MAX_CONTACTS_PER_IP": "256",
            "SPORE_DHT_RATE": "100000", "SPORE_LOG_LEVEL": "warning"}


def _daemon(tmp: Path, name: str) -> Daemon:
    d = make_daemon(tmp / name)
    d.env.update(LOOPBACK)
    return d


def _stop(spores: list[Daemon]) -> None:
    for d in spores:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


@pytest.fixture
def open_swarm(tmp_path: Path) -> Iterator[list[Daemon]]:
    founder, a, b = (_daemon(tmp_path, n) for n in ("founder", "a", "b"))
    spores = [founder, a, b]
    try:
        got = founder.cli_json("init", "--swarm", "sybil", "--open", "--puzzle-bits", str(BITS))
        assert got["membership"] == "open"
        founder.start()
        for d in (a, b):  # an open swarm: its DNA file is the way in (and a puzzle)
            d.cli("init", "--join", str(founder.state_dir / "dna.bin"), check=True)
            d.start("--peer", founder.dht, wait=False)
        for d in (a, b):
            wait_for(d.healthy, 120, f"spore on {d.port}")
        yield spores
    finally:
        _stop(spores)


@pytest.fixture
def invite_swarm(tmp_path: Path) -> Iterator[list[Daemon]]:
    founder, a = _daemon(tmp_path, "founder"), _daemon(tmp_path, "a")
    spores = [founder, a]
    try:
        assert founder.cli_json("init", "--swarm", "family")["membership"] == "invite"
        founder.start()
        invite_into(founder, a)
        a.start("--peer", founder.dht)
        yield spores
    finally:
        _stop(spores)


def _teach(d: Daemon) -> dict[str, str]:
    """text → memory id of what the founder is taught."""
    return {text: d.cli_json("teach", text)["id"] for text in [FACT, DISTRACTOR, *FILLERS]}


def _ask(d: Daemon) -> dict[str, Any]:
    got: dict[str, Any] = d.json("POST", "/v1/ask", {"question": QUESTION, "top": 4})
    return got


def _top(d: Daemon) -> tuple[str, str]:
    got = _ask(d)
    return got["answer_id"], got["sources"][0]["id"] if got["sources"] else ""


def _sees(d: Daemon, *memories: str) -> bool:
    """Whether an ask on `d` finds each of these memories (through the swarm's
    index on a spore that holds none of them)."""
    return set(memories) <= {s["id"] for s in _ask(d)["sources"]}


def _rate_like_a_user(d: Daemon, fact: str) -> set[str]:
    """Ask; rate the top-1 down while it is not the fact, then the fact up:
    the memories it rated down."""
    down: set[str] = set()
    seen: list[list[str]] = []
    for _ in range(len(FILLERS) + 2):  # at worst every other memory first
        got = _ask(d)
        seen.append([s["id"][:8] + ("-" if s.get("rejected") else "") for s in got["sources"]])
        answer, top = got["answer_id"], got["sources"][0]["id"] if got["sources"] else ""
        if top == fact:
            d.json("POST", "/v1/rate", {"answer_id": answer, "vote": "up"})
            return down
        d.json("POST", "/v1/rate", {"answer_id": answer, "vote": "down"})
        down.add(top)
    raise AssertionError(f"the fact {fact[:8]} never came to the top on the rating spore; "
                         f"its sources, ask by ask: {seen}")


def _voters(d: Daemon, memory: str) -> int:
    return int(d.json("GET", f"/v1/votes/{memory}")["voters"])


def _attack(tmp: Path, victims: list[Daemon], dna: Path,
            targets: list[dict[str, Any]] | None = None) -> subprocess.Popen[str]:
    cfg = {"dna": str(dna), "k": K, "bits": BITS, "out": str(tmp / "attacker.json"),
           "victims": [["127.0.0.1", int(d.env["SPORE_DHT_PORT"])] for d in victims],
           "pull_s": 0.5, "targets": targets or []}
    (tmp / "attacker-config.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, str(ATTACKER), str(tmp / "attacker-config.json")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())  # the identities are minted
    assert ready["ready"] and ready["k"] == K and ready["bits"] == BITS
    return proc


def _finish(tmp: Path, proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    out: dict[str, Any] = json.loads((tmp / "attacker.json").read_text())
    return out


def _counters(d: Daemon) -> dict[str, int]:
    return dict(d.json("GET", "/v1/status")["gossip"]["counters"])


def test_paying_sybils_are_heard_yet_the_rated_answer_stays_on_top(
        open_swarm: list[Daemon], tmp_path: Path) -> None:
    founder, a, b = open_swarm
    ids = _teach(founder)
    fact, distractor = ids[FACT], ids[DISTRACTOR]
    wait_for(lambda: all(_top(d)[1] == distractor and _sees(d, fact) for d in open_swarm), 60,
             "every spore to rank the distractor first (the encoder does) and find the fact")
    assert _rate_like_a_user(founder, fact) == {distractor}
    on_distractor = 1 + len(_rate_like_a_user(a, fact))  # a may find the fact on top
    wait_for(lambda: all(_voters(d, fact) == 2 and _voters(d, distractor) == on_distractor
                         for d in open_swarm), 30, "the honest votes to reach every spore")
    assert _top(b)[1] == fact  # b never rated: the others' votes put the fact on top

    attacker = _attack(tmp_path, open_swarm, founder.state_dir / "dna.bin")
    try:
        wait_for(lambda: all(_voters(d, fact) == 2 + K
                             and _voters(d, distractor) == on_distractor + K
                             for d in open_swarm), 40,
                 "the attacker's votes to be accepted on every spore")
    finally:
        report = _finish(tmp_path, attacker)
    assert report["targets"] == 2 and report["votes_made"] == 2 * K
    for d in open_swarm:
        votes = d.json("GET", f"/v1/votes/{fact}")
        assert votes["down"] == K and votes["up"] == 2, votes  # heard: 50 against 2
        assert votes["weighed_down"] <= LOW_VOICES_CAP + 1e-6, votes  # 50 keys: a quarter
        assert _top(d)[1] == fact, d.port  # ... yet the fact stays on top
    sybils = {r["key"]: r for r in founder.json("GET", "/v1/members")["members"]
              if r["kind"] == "ticket"}
    assert len(sybils) == K + 2  # a and b paid the puzzle too
    honest = {d.json("GET", "/v1/status")["public_key"] for d in (a, b)}
    for key, row in sybils.items():
        if key not in honest:
            assert row["trust"] is not None and row["trust"] <= trust.FLOOR + 0.01, row
    assert report["items_ok"] > 0 and set(report["requests"]) == {"ok"}, report


def test_an_invite_swarm_accepts_nothing_from_the_same_attacker(
        invite_swarm: list[Daemon], tmp_path: Path) -> None:
    founder, a = invite_swarm
    ids = _teach(founder)
    _rate_like_a_user(founder, ids[FACT])
    wait_for(lambda: _voters(a, ids[FACT]) == 1, 30, "the founder's vote to reach a")
    # It cannot pull the votes (refused), so it is told what to vote on.
    vec = np.random.default_rng(0).standard_normal(
        int(founder.json("GET", "/v1/dna")["encoder"]["dim"]))
    targets = [{"memory": ids[FACT], "vec": (vec / np.linalg.norm(vec)).tolist(), "up": False}]
    attacker = _attack(tmp_path, invite_swarm, founder.state_dir / "dna.bin", targets)
    try:
        wait_for(lambda: sum(_counters(d).get("refused_not_member", 0) for d in invite_swarm)
                 >= 10, 30, "the attacker's requests to be refused")
    finally:
        report = _finish(tmp_path, attacker)
    assert report["items_ok"] == 0 and report["items_sent"] > 0, report
    assert set(report["requests"]) == {"refused:not_member"}, report
    assert all(k.endswith("refused:not_member") for k in report["pulls"]), report
    for d in invite_swarm:
        assert _voters(d, ids[FACT]) == 1  # the founder's only
        assert len(d.json("GET", "/v1/members")["members"]) == 2  # no pass of theirs held
