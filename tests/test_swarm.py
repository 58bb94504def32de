"""A swarm of real spore processes on 127.0.0.1 (real UDP DHT, real HTTP API).

Memories taught on random spores are answerable from every other spore;
after kill -9 of a third of the spores they still are, and after one
republish interval every memory is back on 3 live holders.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator

import pytest

from tests.conftest import Daemon, make_daemon, start_swarm, stop_all, wait_for

# 8 daemons by default (~50 s here; 16 took ~100 s and the whole suite past its
# 10 minutes): SPORE_TEST_SPORES=16 for the larger swarm. tests/test_ask_inprocess.py
# proves the same walk (taught anywhere, answered everywhere) in-process in a second.
pytestmark = pytest.mark.slow
SPORES = int(os.environ.get("SPORE_TEST_SPORES", "8"))
REPUBLISH_S = 3.0
FACTS = [
    ("How do I back up my home directory?", "Run restic every night to back up /home."),
    ("Which program manages printers?", "CUPS manages the printers and print queues."),
    ("How do I list open network ports?", "Use ss -tulpn to list listening sockets."),
    ("How can I find which package owns a file?", "dpkg -S /path/to/file names the package."),
    ("What starts services at boot?", "systemd starts services at boot from unit files."),
    ("How do I see the kernel log?", "journalctl -k shows the kernel ring buffer messages."),
    ("How do I change my login shell?", "chsh -s /bin/zsh changes your login shell."),
    ("How do I check free disk space?", "df -h shows free space on every mounted disk."),
]


def _ask(d: Daemon, question: str) -> dict:  # type: ignore[type-arg]
    code, body = d.http("POST", "/v1/ask", {"question": question, "top": 3})
    assert code == 200, body
    return body  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    spores: list[Daemon] = []
    for i in range(SPORES):
        d = make_daemon(tmp_path_factory.mktemp(f"spore{i}"))
        d.env.update(SPORE_REPUBLISH_S=str(REPUBLISH_S), SPORE_MAX_CONTACTS_PER_IP="64")
        spores.append(d)
    start_swarm(spores)  # every spore joins the swarm founded by the first one
    yield spores
    stop_all(spores)


def _holders(d: Daemon, memory_id: str) -> int:
    code, body = d.http("GET", f"/v1/dht/locate/{memory_id}")
    return len(body["holders"]) if code == 200 else 0


def test_taught_anywhere_answered_everywhere(swarm: list[Daemon]) -> None:
    rng = random.Random(7)
    taught: dict[str, tuple[Daemon, str, str]] = {}
    for question, answer in FACTS:
        author = rng.choice(swarm)
        code, body = author.http("POST", "/v1/teach", {"text": answer, "question": question})
        assert code == 201, body
        taught[body["id"]] = (author, question, answer)
    for mid, (author, _, _) in taught.items():
        other = next(d for d in swarm if d is not author)
        wait_for(lambda m=mid, o=other: _holders(o, m) >= 3, 60, f"{mid[:8]} on 3 holders")
    misses = []
    for d in swarm:
        for mid, (author, question, _) in taught.items():
            if d is author:
                continue
            tops: list[dict] = []  # type: ignore[type-arg]

            def found(d: Daemon = d, question: str = question, mid: str = mid,
                      tops: list[dict] = tops) -> bool:  # type: ignore[type-arg]
                got = _ask(d, question)
                tops.append(got["sources"][0] if got["sources"] else {})
                return bool(tops[-1].get("id") == mid)
            # A lookup that timed out on a loaded machine is asked again (a CI
            # run missed 2 of 56 once); within 20 s every spore answers.
            try:
                wait_for(found, 20, f"{question!r} on {d.port}")
            except AssertionError:
                misses.append((d.port, question, [t.get("id", "")[:8] for t in tops[-3:]]))
                continue
            assert tops[-1]["author"] == author.cli_json("status")["public_key"]
    assert not misses, misses


def _copies(swarm: list[Daemon], keys: list[str], memory: dict) -> set[int]:  # type: ignore[type-arg]
    """Indexes in `swarm` of the spores that keep `memory`: its author and its DHT holders."""
    code, body = swarm[0].http("GET", f"/v1/dht/locate/{memory['id']}")
    assert code == 200, body
    by_dht = {s.dht: i for i, s in enumerate(swarm)}
    return {by_dht[h["address"]] for h in body["holders"]} | {keys.index(memory["author"])}


def _victims(rng: random.Random, count: int, copies: list[set[int]], spares: range) -> list[int]:
    """`count` spores to kill, never every copy of one memory: the promise is
    that a memory survives the loss of any 2 of its 3 holders while its
    author or the third lives, not the loss of all of them."""
    victims: list[int] = []
    for i in rng.sample(list(spares), len(spares)):
        if len(victims) < count and all(c - {*victims, i} for c in copies):
            victims.append(i)
    assert len(victims) == count, "no third of the swarm can die without a memory's every copy"
    return victims


def test_survives_kill_9_of_a_third(swarm: list[Daemon]) -> None:
    facts = {q for q, _ in FACTS}
    listed = swarm[0].cli_json("memories", "--limit", "1000")["memories"]
    mine = [m for m in listed if m["question"] in facts]
    assert len(mine) == len(FACTS)
    keys = [d.json("GET", "/v1/status")["public_key"] for d in swarm]
    copies = [_copies(swarm, keys, m) for m in mine]
    assert all(len(c) >= 3 for c in copies), copies
    victims = [swarm[i] for i in _victims(random.Random(11), SPORES // 3, copies,
                                          range(1, SPORES))]
    for d in victims:
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.proc = None
    alive = [d for d in swarm if d not in victims]
    for d in alive[:4]:
        for question in facts:
            got = _ask(d, question)
            assert got["sources"], f"{question!r} unanswerable on {d.port} after the kills"
    # one republish interval (and read repair) later: every memory on 3 live holders
    for m in mine:
        wait_for(lambda mid=m["id"]: _holders(alive[-1], mid) >= 3, 6 * REPUBLISH_S + 30,
                 f"{m['id'][:8]} back on 3 live holders")


def test_swarm_status_counts(swarm: list[Daemon]) -> None:
    alive = [d for d in swarm if d.proc is not None]
    status = alive[0].cli_json("status")["dht"]
    assert status["contacts"] >= 3
    assert {"stored", "timeouts"} <= set(status["counters"]) or status["counters"]
    peers = alive[0].cli_json("peers")["peers"]
    assert peers and all(len(p["node_id"]) == 40 for p in peers)
