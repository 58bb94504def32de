"""Answers in words from real daemons: two spores of an invite swarm, each
with OpenAI-compatible providers that are real HTTP servers on 127.0.0.1
(tests/llm_stub.py), the real encoder, asks and their NDJSON streams read
over real sockets, the egress tap on what the asking spore sends its swarm;
and, when the `generate` extra is installed, the embedded generator itself.

Spore A (the founder) generates with ["flaky", "steady"]: flaky's mode
changes per test (429, hang, slow), steady always answers. Spore B, invited,
generates with its own stub ("bstub"), which must never be called for an
answer A's rating made known.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pnode.answering import MAX_ANSWER_CHARS, MEMORY_CONFIDENCE
from p2pnode.egress import read
from tests.conftest import Daemon, invite_into, make_daemon, stop_all, wait_for
from tests.llm_stub import StubServer, serve_stub

FACTS = [("When does the backup job run?", "The backup job runs restic every night at 02:00."),
         ("Where is the office printer?",
          "The office printer is a Brother laser printer on the second floor, next to the "
          "kitchen."),
         ("What is the guest wifi password?",
          "The guest wifi is called Visitors and its password is printed on the router."),
         ("How long are backups kept?",
          "Restic keeps 30 daily and 12 monthly snapshots of every backup.")]
CONFIDENT = "Where is the office printer?"  # its own memory, far from the others
UNSURE = "how are the backups handled?"  # near two backup memories: low confidence
OFF_TOPIC = "Who painted the Mona Lisa?"  # near nothing held: "I don't know"
REPLY = "Restic backs everything up every night at 02:00 [1], and keeps snapshots [2]."


def configure(d: Daemon, providers: dict[str, StubServer], *, first_token_s: float = 1.0,
              cooldown_s: float = 2.0) -> None:
    """[generate] in the daemon's config.toml: these stubs, in this order."""
    lines = ["[generate]", f"providers = {json.dumps(list(providers))}"]
    for name, stub in providers.items():
        lines += [f"[generate.{name}]", f'url = "{stub.url}"', f'model = "{stub.model}"',
                  f"first_token_s = {first_token_s}", "deadline_s = 20",
                  f"cooldown_s = {cooldown_s}"]
    d.config_dir.mkdir(parents=True, exist_ok=True)
    (d.config_dir / "config.toml").write_text("\n".join(lines) + "\n")
    d.env.pop("SPORE_GENERATE", None)  # the file says which providers


class Swarm:
    def __init__(self, a: Daemon, b: Daemon, stubs: dict[str, StubServer]) -> None:
        self.a, self.b, self.stubs = a, b, stubs

    def calls(self) -> dict[str, int]:
        return {name: stub.calls for name, stub in self.stubs.items()}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    with serve_stub(reply=REPLY) as flaky, serve_stub(reply=REPLY) as steady, \
            serve_stub(reply="B never says this.") as bstub:
        a, b = (make_daemon(tmp_path_factory.mktemp(n)) for n in ("a", "b"))
        configure(a, {"flaky": flaky, "steady": steady})
        configure(b, {"bstub": bstub})
        for d in (a, b):
            d.env.update(SPORE_GOSSIP_INTERVAL="0.25")
        a.env["SPORE_CAPTURE_EGRESS"] = str(a.state_dir.parent / "egress.bin")
        try:
            a.start()
            invite_into(a, b)
            b.start("--peer", a.dht)
            for q, text in FACTS:
                a.json("POST", "/v1/teach", {"text": text, "question": q})
            yield Swarm(a, b, {"flaky": flaky, "steady": steady, "bstub": bstub})
        finally:
            stop_all([a, b])


def ask(d: Daemon, question: str, **how: Any) -> dict[str, Any]:
    return d.json("POST", "/v1/ask", {"question": question, **how})  # type: ignore[no-any-return]


def memory_ids(d: Daemon) -> dict[str, str]:
    return {m["text"]: m["id"] for m in d.json("GET", "/v1/memories?limit=100")["memories"]}


def stream(d: Daemon, body: dict[str, Any], headers: dict[str, str] | None = None
           ) -> tuple[int, str, list[dict[str, Any]]]:
    """POST /v1/ask with stream over a real socket: status, type, the events."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    sent = {"Content-Type": "application/json", **(headers or {})}
    try:
        conn.request("POST", "/v1/ask", json.dumps({**body, "stream": True}), sent)
        resp = conn.getresponse()
        kind = resp.headers.get("Content-Type", "")
        if resp.status != 200:
            return resp.status, kind, [json.loads(resp.read())]
        return resp.status, kind, [json.loads(line) for line in resp if line.strip()]
    finally:
        conn.close()


def provider(d: Daemon, name: str) -> dict[str, Any]:
    providers = d.json("GET", "/v1/status")["generate"]["providers"]
    return next(p for p in providers if p["name"] == name)  # type: ignore[no-any-return]


def flaky_back(s: Swarm) -> None:
    """flaky answers again, and is out of its cooldown."""
    s.stubs["flaky"].mode = "ok"
    wait_for(lambda: provider(s.a, "flaky")["state"] == "ready", 60, "flaky out of cooldown")


# -- memory first -----------------------------------------------------------------------
def test_a_confident_question_is_answered_from_memory_without_a_provider(swarm: Swarm) -> None:
    before = swarm.calls()
    got = ask(swarm.a, CONFIDENT)
    assert got["confidence"] >= MEMORY_CONFIDENCE, "the premise: a confident memory"
    assert got["route"] == "memory" and got["answer"] == FACTS[1][1]
    assert "generated" not in got and swarm.calls() == before
    _, _, events = stream(swarm.a, {"question": CONFIDENT})
    assert [e["event"] for e in events] == ["sources", "done"]
    assert events[1]["citations"] == [{"n": 1, "id": got["sources"][0]["id"]}]
    assert swarm.calls() == before


def test_an_off_topic_question_is_i_dont_know_without_generating(swarm: Swarm) -> None:
    before = swarm.calls()
    got = ask(swarm.a, OFF_TOPIC)
    assert got["route"] == "unknown" and got["abstained"] and got["answer"] is None
    assert swarm.calls() == before


# -- in words -------------------------------------------------------------------------------
def test_an_answer_in_words_streams_as_ndjson_citing_real_memories(swarm: Swarm) -> None:
    flaky_back(swarm)
    ids = memory_ids(swarm.a)
    status, kind, events = stream(swarm.a, {"question": UNSURE})
    assert status == 200 and kind.startswith("application/x-ndjson")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "sources" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    assert len(kinds) > 5  # word by word, as the provider sent them
    sources, done = events[0], events[-1]
    assert sources["route"] == "generated" and sources["answer"] is None
    assert sources["confidence"] < MEMORY_CONFIDENCE, "the premise: an unsure memory"
    assert "".join(e["text"] for e in events[1:-1]).strip() == done["answer"] == REPLY
    assert done["provider"] == "flaky" and done["model"] == "stub-model"
    shown = [s["id"] for s in sources["sources"]]
    assert done["citations"] == [{"n": 1, "id": shown[0], "by": "marker"},
                                 {"n": 2, "id": shown[1], "by": "marker"}]
    backups = {ids[FACTS[0][1]], ids[FACTS[3][1]]}
    assert {c["id"] for c in done["citations"]} == backups  # real memories, the right ones
    assert done["answer_id"] == sources["answer_id"]


def test_a_client_that_goes_away_stops_the_generation(swarm: Swarm) -> None:
    flaky = swarm.stubs["flaky"]
    flaky_back(swarm)
    flaky.mode, flaky.slow_s = "slow", 0.5  # a word every half second: 7 s for the reply
    before = swarm.a.json("GET", "/v1/status")["generate"]["counters"].get("cancelled", 0)
    conn = http.client.HTTPConnection("127.0.0.1", swarm.a.port, timeout=30)
    conn.request("POST", "/v1/ask", json.dumps({"question": UNSURE, "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert json.loads(resp.readline())["event"] == "sources"
    assert json.loads(resp.readline())["event"] == "token"
    conn.sock.close()  # type: ignore[union-attr]
    conn.close()

    def stopped() -> bool:
        gen = swarm.a.json("GET", "/v1/status")["generate"]
        return bool(gen["running"] == 0 and gen["counters"].get("cancelled", 0) == before + 1)

    wait_for(stopped, 30, "the generation cancelled")
    wait_for(lambda: not _established(_port(flaky.url)), 30,
             "the daemon's connection to the provider closed")
    flaky_back(swarm)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _established(port: int) -> list[str]:
    """ESTABLISHED TCP connections to or from `port` on this host (/proc/net)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and port in (int(local.rsplit(":", 1)[1], 16),
                                          int(remote.rsplit(":", 1)[1], 16)):
                out.append(line)
    return out


# -- the gate, for streams too ------------------------------------------------------------------
def test_a_cross_site_or_foreign_host_streaming_ask_is_refused(swarm: Swarm) -> None:
    before = swarm.calls()
    body = {"question": UNSURE}
    for headers, code in (({"Origin": "http://evil.example"}, 403),
                          ({"Host": "evil.example"}, 403),
                          ({"Sec-Fetch-Site": "cross-site"}, 403),
                          ({"Content-Type": "text/plain"}, 415)):
        status, kind, [error] = stream(swarm.a, body, headers)
        assert (status, kind) == (code, "application/json; charset=utf-8"), headers
        assert "error" in error
    assert swarm.calls() == before  # nothing was generated


def test_insane_flags_on_an_ask_are_refused_and_nothing_generates(swarm: Swarm) -> None:
    before = swarm.calls()
    for flags in ({"stream": 1}, {"stream": "true"}, {"generate": None}, {"generate": [True]},
                  {"ungrounded": {"yes": 1}}, {"ungrounded": 0.0}):
        code, body = swarm.a.http("POST", "/v1/ask", {"question": UNSURE, **flags})
        assert code == 400 and "true or false" in body["error"], (flags, code, body)
    assert swarm.calls() == before  # nothing was generated
    assert swarm.a.healthy()


def test_rated_down_words_are_not_stored(swarm: Swarm) -> None:
    count = swarm.a.json("GET", "/v1/status")["memories"]
    got = ask(swarm.a, "anything on backups?")
    assert got["route"] == "generated", "the premise: an unsure memory"
    rated = swarm.a.json("POST", "/v1/rate", {"answer_id": got["answer_id"], "vote": "down"})
    assert rated["stored"] is False and rated["memory_id"] is None
    again = ask(swarm.a, "anything on backups?")
    shown = swarm.a.cli("rate", again["answer_id"], "down", check=True).stdout
    assert "dropped" in shown
    assert swarm.a.json("GET", "/v1/status")["memories"] == count


# -- the faces: CLI and MCP -----------------------------------------------------------------------
def test_spore_ask_streams_words_then_the_cited_sources(swarm: Swarm) -> None:
    question = "how do backups work here?"
    shown = swarm.a.cli("ask", question, check=True).stdout
    assert shown.startswith(REPLY) and "in words by stub-model (flaky)" in shown, shown
    assert "[1] cited" in shown and "[2] cited" in shown
    whole = json.loads(swarm.a.cli("ask", question, "--json", check=True).stdout)
    assert whole["route"] == "generated" and whole["generated"]["text"] == REPLY
    memory = json.loads(swarm.a.cli("ask", question, "--no-generate", "--json",
                                    check=True).stdout)
    assert memory["route"] == "memory" and "generated" not in memory
    status = swarm.b.cli("status", check=True).stdout
    assert "provider bstub" in status and "ready" in status


def test_mcp_recall_returns_the_answer_in_words(swarm: Swarm) -> None:
    pytest.importorskip("mcp")
    from tests.test_mcp import ok, run

    async def body(c: Any) -> dict[str, Any]:
        return ok(await c.call_tool("recall", {"question": "backup"}))

    got = run(swarm.a, "http", body)
    assert got["route"] == "generated" and got["answer"] == REPLY
    assert got["generated"]["citations"][0]["id"] == got["sources"][0]["id"]


def test_hostile_provider_output_reaches_nobody_unbounded(swarm: Swarm) -> None:
    flaky = swarm.stubs["flaky"]
    flaky_back(swarm)
    flaky.reply = (" [0] [999] \x1b[2J\x1b]0;pwned\x07 \u202eevil\u200b\x00 [1] "
                   + " ".join(["B" * 50_000] * 20))  # ~1 MB in lines under the stream's cap
    try:
        status, _, events = stream(swarm.a, {"question": UNSURE})
        done = events[-1]
        assert status == 200 and done["event"] == "done" and done["cut"] is True
        text = "".join(e["text"] for e in events if e["event"] == "token")
        assert len(text) <= MAX_ANSWER_CHARS and text.strip() == done["answer"]
        assert not any(c in text for c in "\x1b\x07\x00\u202e\u200b")
        assert done["ignored_citations"] == 3  # [0], [999], and [2J] of the escape
        assert [c["n"] for c in done["citations"]] == [1]
        shown = swarm.a.cli("ask", UNSURE).stdout  # what a terminal gets
        assert "\x1b" not in shown and "\x07" not in shown and len(shown) < 2 * MAX_ANSWER_CHARS
    finally:
        flaky.reply = REPLY


def test_a_hang_then_429_fall_back_to_the_second_provider_and_cool_down(
        swarm: Swarm) -> None:
    flaky, steady = swarm.stubs["flaky"], swarm.stubs["steady"]
    flaky_back(swarm)
    # A server that accepts and never answers: its first-token deadline (1 s), then steady.
    flaky.mode = "hang"
    before = swarm.calls()
    got = ask(swarm.a, UNSURE)
    assert got["route"] == "generated" and got["generated"]["provider"] == "steady"
    assert got["answer"] == REPLY and flaky.calls == before["flaky"] + 1
    hung = provider(swarm.a, "flaky")
    assert hung["state"] == "cooling" and "first token" in hung["last_error"]
    flaky_back(swarm)  # its own cooldown: 2 s
    # A rate-limited one: skipped for as long as its Retry-After says.
    flaky.mode, flaky.retry_after = "429", "30"
    before = swarm.calls()
    got = ask(swarm.a, UNSURE)
    assert got["generated"]["provider"] == "steady"
    assert flaky.calls == before["flaky"] + 1 and steady.calls == before["steady"] + 1
    cooling = provider(swarm.a, "flaky")
    assert cooling["state"] == "cooling" and 20 < cooling["cooling_s"] <= 30
    assert "429" in cooling["last_error"]
    lines = swarm.a.cli("status", check=True).stdout.splitlines()
    assert any(line.startswith("provider flaky") and "cooling for" in line for line in lines)
    go = next(line for line in lines if line.startswith("questions go"))
    assert flaky.url.rsplit("/", 1)[0] in go and steady.url.rsplit("/", 1)[0] in go
    assert ask(swarm.a, UNSURE)["generated"]["provider"] == "steady"
    assert flaky.calls == before["flaky"] + 1  # not even asked while it cools down
    flaky.mode = "ok"  # it stays in cooldown for the tests after this one: steady answers


# -- learning from a rating ----------------------------------------------------------------------
def test_a_rated_up_answer_is_served_from_memory_on_another_spore(swarm: Swarm) -> None:
    a, b = swarm.a, swarm.b
    got = ask(a, UNSURE)
    assert got["route"] == "generated"
    cited = [c["id"] for c in got["generated"]["citations"]]
    rated = a.json("POST", "/v1/rate", {"answer_id": got["answer_id"], "vote": "up"})
    assert rated["generated"] and rated["stored"] and rated["up"] == 1
    memory = a.json("GET", f"/v1/memories/{rated['memory_id']}")
    assert memory["question"] == "" and memory["text"] == REPLY
    assert memory["origin"] == f"generated by stub-model from {','.join(cited)}"
    before = swarm.calls()
    again = ask(a, UNSURE)  # here: from memory now
    assert again["route"] == "memory" and again["answer"] == REPLY
    assert swarm.calls() == before

    # There, once the vote has gossiped (asked from memory only until then).
    def known_there() -> bool:
        if b.json("GET", f"/v1/votes/{rated['memory_id']}")["up"] < 1:
            return False  # the vote has not gossiped yet
        sources = ask(b, UNSURE, generate=False, top=5)["sources"]
        return rated["memory_id"] in [s["id"] for s in sources]

    wait_for(known_there, 60, "B to hold A's vote and find the rated-up memory")
    there = ask(b, UNSURE)  # with its generator on: still from memory
    assert there["route"] == "memory" and there["answer"] == REPLY
    assert there["sources"][0]["id"] == rated["memory_id"]
    assert swarm.stubs["bstub"].calls == 0
    held = b.json("GET", f"/v1/memories/{rated['memory_id']}")
    assert held["question"] == "" and held["author"] == memory["author"]

    # What A sent its swarm: the memory (its text is published by design),
    # never the question it answered.
    sent = b"".join(data for _, data in read(a.state_dir.parent / "egress.bin"))
    assert REPLY.encode() in sent
    for probe in (UNSURE, UNSURE[:16], UNSURE[-16:], UNSURE.upper()):
        assert probe.encode() not in sent and probe.encode("utf-16-le") not in sent


# -- the embedded generator, for real ------------------------------------------------------------
def test_the_embedded_generator_answers_in_words_citing_a_memory(tmp_path: Path) -> None:
    from p2pnode.embedded import embedded_model_path

    _, missing = embedded_model_path()
    if missing:
        pytest.skip(f"the embedded generator is not installed: {missing}")
    d = make_daemon(tmp_path)
    d.env["SPORE_GENERATE"] = "embedded"
    d.start()
    try:
        for q, text in FACTS:
            d.json("POST", "/v1/teach", {"text": text, "question": q})
        ids = set(memory_ids(d).values())
        # SmolLM2-135M samples, and now and then (1 in 3 here) rambles on without
        # taking a passage's words or writing a marker: that answer rightly cites
        # nothing. Each ask generates anew (unrated answers are not kept): one
        # of five must cite.
        answers = []
        for _ in range(5):
            status, _, events = stream(d, {"question": UNSURE})
            assert status == 200 and events[0]["route"] == "generated"
            done = events[-1]
            assert done["event"] == "done", events[-3:]
            assert done["provider"] == "embedded" and done["model"].startswith("SmolLM2")
            tokens = [e for e in events if e["event"] == "token"]
            assert len(tokens) > 3 and done["answer"]
            assert "".join(e["text"] for e in tokens).strip() == done["answer"]
            answers.append(done["answer"])
            if done["citations"]:
                break
        assert done["citations"], answers
        assert {c["id"] for c in done["citations"]} <= ids
        where = d.json("GET", "/v1/status")["generate"]
        assert where["questions_go"] == ["this device"] and not where["leaves_device"]
    finally:
        d.stop()
