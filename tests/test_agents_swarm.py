"""Agents among real spore processes (loopback HTTP and UDP).

A division places the child on another spore, which checks it and runs it;
feedback reaches agents hosted elsewhere; the question's text never leaves
the asking spore (everything it sends is captured and searched); a hostile
genome offered over signed HTTP is refused and counted, and the spore keeps
serving.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from agents.genome import make_lineage
from p2pnode.egress import read
from p2pnode.identity import Identity
from p2pnode.peerauth import sign_request
from tests.conftest import Daemon, make_daemon, pass_header, start_swarm, stop_all, wait_for
from tests.test_genome_guard import external_in_initializer

FACTS = [
    ("Which tool shows the kernel log?", "journalctl -k shows the kernel ring buffer."),
    ("How do I list open network ports?", "ss -tulpn lists the listening sockets and ports."),
    ("What manages the printers?", "CUPS manages the printers and their print queues."),
]
QUESTION = "Where can I read the messages of the kernel?"


@pytest.fixture(scope="module")
def spores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    out = []
    for i in range(3):
        d = make_daemon(tmp_path_factory.mktemp(f"a{i}"))
        d.env.update(SPORE_GOSSIP_INTERVAL="0.25", SPORE_MAX_CONTACTS_PER_IP="64")
        out.append(d)
    # The asker hosts no more than its 4 seed agents: its children go elsewhere.
    out[1].env.update(SPORE_MAX_AGENTS="4",
                      SPORE_CAPTURE_EGRESS=str(out[1].state_dir.parent / "egress.bin"))
    start_swarm(out)
    out[0].json("POST", "/v1/dna", {"set": {"division_threshold": 2}})
    wait_for(lambda: all(d.json("GET", "/v1/dna")["division_threshold"] == 2 for d in out), 30,
             "the low division threshold everywhere")
    for d in out:  # every spore knows them: each ask has several candidates here
        for q, a in FACTS:
            d.json("POST", "/v1/teach", {"text": a, "question": q})
    yield out
    stop_all(out)


def _here(d: Daemon) -> list[dict[str, Any]]:
    return d.json("GET", "/v1/agents")["here"]  # type: ignore[no-any-return]


def test_a_division_places_the_child_on_another_spore(spores: list[Daemon]) -> None:
    asker = spores[1]
    parents = {a["id"] for a in _here(asker)}
    assert len(parents) == 4
    for _ in range(2):  # division threshold 2: two good ratings
        got = asker.json("POST", "/v1/ask", {"question": QUESTION, "top": 3})
        # No say before their record earns it: they rank in the shadow.
        assert got["answer"] == FACTS[0][1] and got["agents_weight"] == 0.0
        rated = asker.json("POST", "/v1/rate", {"answer_id": got["answer_id"], "vote": "up"})
        assert rated["agents_rated"] >= 4
    status = asker.json("GET", "/v1/status")
    record = status["agents"]["record"]  # judged in the shadow all the same: the first
    assert record["novel"]["of"] == 1 and record["familiar"]["of"] == 1  # ask, then a rated one
    assert status["calibration"]["samples"] >= 2  # each rating is an outcome of a confidence

    def children() -> list[tuple[int, dict[str, Any]]]:
        return [(i, a) for i, d in enumerate(spores) if i != 1 for a in _here(d)
                if a["parent"] in parents]

    wait_for(lambda: bool(children()), 30, "a child adopted by another spore")
    host, child = children()[0]
    assert child["generation"] == 1
    events = spores[host].json("GET", "/v1/agents")["events"]
    assert any(e["event"] == "adopted" and e["agent"] == child["id"] for e in events)
    # The host runs it: its pool scores with the child among its agents, and
    # the child is credited with the rating of that answer.
    got = spores[host].json("POST", "/v1/ask", {"question": QUESTION, "top": 3})
    rated = spores[host].json("POST", "/v1/rate", {"answer_id": got["answer_id"], "vote": "up"})
    assert rated["agents_rated"] >= 1
    mine = {a["id"]: a for a in _here(spores[host])}
    assert mine[child["id"]]["interactions"] > child["interactions"]
    registry = asker.json("GET", "/v1/agents")["registry"]
    wait_for(lambda: any(a["id"] == child["id"] for a in
                         asker.json("GET", "/v1/agents")["registry"]), 30,
             "the child in the asker's registry")
    assert all(a["generation"] == 0 for a in registry if a["id"] in parents)


def test_feedback_reaches_agents_hosted_elsewhere(spores: list[Daemon]) -> None:
    asker, specialist_host = spores[2], spores[1]  # spore 1's agents learnt this question

    def received() -> int:
        status = specialist_host.json("GET", "/v1/status")
        return int(status["agents"]["counters"].get("feedback_received", 0))

    before = received()
    deadline = time.monotonic() + 30
    while received() == before and time.monotonic() < deadline:
        got = asker.json("POST", "/v1/ask", {"question": QUESTION, "top": 3})
        asker.json("POST", "/v1/rate", {"answer_id": got["answer_id"], "vote": "up"})
    assert received() > before
    counters = asker.json("GET", "/v1/status")["agents"]["counters"]
    assert counters.get("remote_scorers", 0) > 0 and counters.get("feedback_sent", 0) > 0


def test_the_question_text_never_leaves_the_asking_spore(spores: list[Daemon]) -> None:
    asker = spores[1]
    capture = asker.state_dir.parent / "egress.bin"
    records = read(capture)
    kinds = {k for k, _ in records}
    assert {b"udp", b"http", b"body"} <= kinds, kinds  # it did talk to its peers
    sent = b"".join(data for _, data in records)
    assert b"/peer/v1/feedback" in sent or b"/peer/v1/score" in sent or b"adopt" in sent
    # What was *taught* is published by design (the memory records); what is
    # *asked* never leaves: only its embedding does.
    for probe in (QUESTION, QUESTION.lower(), QUESTION[:20], QUESTION[-20:]):
        assert probe.encode() not in sent, probe
        assert probe.encode("utf-16-le") not in sent
    assert FACTS[0][1].encode() in sent  # the capture sees plain text when there is some


def test_a_hostile_genome_is_refused_and_the_spore_keeps_serving(spores: list[Daemon]) -> None:
    host = spores[0]
    swarm = bytes.fromhex(host.json("GET", "/v1/status")["swarm_id"])
    stranger = Identity.from_seed(b"hostile tester")
    genome = external_in_initializer().SerializeToString()
    lineage = make_lineage(stranger, genome=genome, created_ms=int(time.time() * 1000))
    body = msgpack.packb([lineage.wire, genome, b""], use_bin_type=True)
    code = 503
    for _ in range(20):  # 503: the peer port is serving its 8 at once; come again
        headers = sign_request(stranger, swarm, "POST", "/peer/v1/adopt", body,
                               int(time.time() * 1000), os.urandom(16)
                               ) | pass_header(host, stranger)  # a member, invited
        req = urllib.request.Request(f"http://{host.dht}/peer/v1/adopt", data=body,
                                     method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        code = refused.value.code
        if code != 503:
            break
        time.sleep(0.1)
    assert code == 400
    status = host.json("GET", "/v1/status")
    assert status["agents"]["counters"].get("genome_rejected_external_data", 0) >= 1
    assert status["gossip"]["counters"].get("refused_external_data", 0) >= 1
    assert host.json("POST", "/v1/ask", {"question": QUESTION, "top": 1})["answer"]
