"""The spore command against a real daemon process on a free loopback port."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Daemon

FAQ = {
    "Debian is a free operating system built by volunteers around the world.":
        "What is Debian?",
    "To upgrade to the next stable release, edit sources.list and run apt full-upgrade.":
        "How do I upgrade Debian?",
    "Cats are small carnivorous mammals that people keep as pets.": "What is a cat?",
}


def test_teach_ask_rate_memories_status(running: Daemon) -> None:
    empty = running.cli_json("ask", "is anybody home?")
    assert empty["sources"] == [] and empty["answer_id"] is None
    assert "teach me" in running.cli("ask", "hello?", check=True).stdout
    for text in FAQ:
        out = running.cli_json("teach", text)
        assert out["new"] and len(out["id"]) == 64
    again = running.cli_json("teach", next(iter(FAQ)))
    assert not again["new"]

    answer = running.cli_json("ask", "how can I move my system to the newer Debian release?")
    assert "upgrade" in answer["answer"]
    assert 0.0 < answer["confidence"] <= 1.0 and answer["answer_id"]
    source = answer["sources"][0]
    assert source["origin"] == "taught" and len(source["author"]) == 64

    human = running.cli("ask", "what pets do people keep?", check=True).stdout
    assert "Cats" in human and "answer id" in human

    rated = running.cli_json("rate", answer["answer_id"], "up")
    assert rated["up"] == 1 and rated["fitness"] > 0

    listed = running.cli_json("memories")
    assert len(listed["memories"]) == 3
    one = running.cli_json("memories", source["id"])
    assert one["up"] == 1

    status = running.cli_json("status")
    assert status["memories"] == 3 and status["votes"] == 1 and status["rss_mb"] > 0
    assert running.cli("status", check=True).stdout.startswith("node ")


def test_a_down_vote_changes_the_ranking(running: Daemon) -> None:
    """Two memories answer the same question; rating the first down lets the second through."""
    running.cli_json("teach", "The default text editor on Debian is nano for new users.")
    running.cli_json("teach", "Debian ships several text editors, nano and vim among them.")
    question = "which text editor does Debian use?"
    first = running.cli_json("ask", question)
    top = first["sources"][0]["id"]
    running.cli_json("rate", first["answer_id"], "down")  # one is enough for this question
    second = running.cli_json("ask", question, "--top", "20")  # every memory, the rejected last
    assert second["sources"][0]["id"] != top
    assert [s["id"] for s in second["sources"] if s.get("rejected")] == [top]
    assert second["sources"][-1]["id"] == top
    human = running.cli("ask", question, "--top", "20", check=True).stdout
    assert "(rated down for this question)" in human
    # up votes on the new top keep it there
    running.cli_json("rate", second["answer_id"], "up")
    third = running.cli_json("ask", question)
    assert third["sources"][0]["id"] == second["sources"][0]["id"]


def test_ingest_reports_bad_files_and_goes_on(running: Daemon, tmp_path: Path) -> None:
    docs = tmp_path / "notes"
    docs.mkdir()
    (docs / "a.md").write_text("# Backups\n\nRun restic every night to back up /home.\n")
    (docs / "b.html").write_text("<h2>Printing</h2><p>CUPS manages printers on Debian.</p>")
    (docs / "c.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (docs / "d.txt").write_bytes("caf\xe9 latin-1".encode("latin-1"))
    res = running.cli("ingest", str(docs), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["files"] == 2 and out["chunks"] == 2 and out["new"] == 2
    reasons = {Path(s["path"]).name: s["reason"] for s in out["skipped"]}
    assert set(reasons) == {"c.txt", "d.txt"} and all("UTF-8" in r for r in reasons.values())
    assert "c.txt" in res.stderr
    answer = running.cli_json("ask", "what manages printers?")
    assert "CUPS" in answer["answer"] and answer["sources"][0]["origin"].endswith("b.html#0")
    # re-ingesting the same files stores nothing new
    assert json.loads(running.cli("ingest", str(docs), "--json").stdout)["new"] == 0


def test_ingest_of_only_bad_files_fails(running: Daemon, tmp_path: Path) -> None:
    bad = tmp_path / "x.txt"
    bad.write_bytes(b"\x00\x01\x02")
    res = running.cli("ingest", str(bad))
    assert res.returncode == 1 and "x.txt" in res.stderr


def test_bad_input_gets_a_4xx_that_says_what_to_fix(running: Daemon) -> None:
    res = running.cli("teach", "   ")
    assert res.returncode == 1 and "empty" in res.stderr
    res = running.cli("teach", "x" * 20_000)
    assert res.returncode == 1 and "limit is 16384 bytes" in res.stderr
    res = running.cli("rate", "feedfacefeedface", "up")
    assert res.returncode == 1 and "no answer with id" in res.stderr
    assert running.http("POST", "/v1/ask", raw=b"{not json")[0] == 400
    assert running.http("POST", "/v1/ask", {"question": 5})[0] == 400
    assert running.http("POST", "/v1/rate", {"answer_id": "x", "vote": "sideways"})[0] == 400
    assert running.http("POST", "/v1/ingest", {"chunks": []})[0] == 400
    assert running.http("GET", "/v1/memories/zz")[0] == 400
    assert running.http("GET", "/v1/memories/" + "0" * 64)[0] == 404
    assert running.http("GET", "/v1/memories?limit=-1")[0] == 400
    assert running.http("GET", "/v1/nothing")[0] == 404
    code, body = running.http("POST", "/v1/teach", raw=b"x" * (5 * 1024 * 1024))
    assert code == 413 and "limit" in body["error"]
    assert running.healthy()


def test_openapi_lists_every_route(running: Daemon) -> None:
    code, doc = running.http("GET", "/v1/openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.")
    assert {"/v1/ask", "/v1/teach", "/v1/ingest", "/v1/rate", "/v1/memories",
            "/v1/status", "/healthz"} <= set(doc["paths"])


def test_openapi_lists_the_membership_routes(running: Daemon) -> None:
    paths = running.http("GET", "/v1/openapi.json")[1]["paths"]
    assert {"/v1/invites", "/v1/members", "/v1/revocations"} <= set(paths)
    for path in ("/v1/invites", "/v1/revocations"):
        assert paths[path]["post"]["security"] == [{"token": []}]


def test_members_of_a_solo_spore_is_its_founder(running: Daemon) -> None:
    data = running.cli_json("members")
    me = running.cli_json("status")
    assert data["membership"] == "invite" and [m["kind"] for m in data["members"]] == ["founder"]
    assert data["members"][0]["node_id"] == me["node_id"]
    assert "founder" in running.cli("members").stdout


def test_usage_error_is_exit_2(running: Daemon) -> None:
    assert running.cli("rate", "abc", "sideways").returncode == 2
    assert running.cli("frobnicate").returncode == 2


def test_unreachable_daemon_is_exit_69(daemon: Daemon) -> None:
    res = daemon.cli("ask", "anyone there?")
    assert res.returncode == 69 and "spore node run" in res.stderr


def test_init_and_dna_show(daemon: Daemon) -> None:
    out = daemon.cli_json("init", "--swarm", "kitchen")
    assert out["founded"] and out["swarm"] == "kitchen"
    dna = daemon.cli_json("dna", "show")
    assert dna["swarm"] == "kitchen" and dna["replication"] == 3
    assert dna["encoder"]["dim"] == 384 and len(dna["encoder"]["sha256"]) == 64
    assert {"division_threshold", "mutation_sigma", "fitness_half_life_days", "protocol",
            "lsh", "founders"} <= set(dna)
    assert not daemon.cli_json("init")["founded"]


def test_port_in_use_is_a_clear_error(daemon: Daemon) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", daemon.port))
        s.listen()
        daemon.start(wait=False)
        assert daemon.stop_wait() == 1
    assert f"port {daemon.port}" in daemon.log.read_text()
    assert "already in use" in daemon.log.read_text()


def test_dht_port_in_use_is_a_clear_error(daemon: Daemon) -> None:
    port = int(daemon.env["SPORE_DHT_PORT"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        daemon.start(wait=False)
        assert daemon.stop_wait() == 1
    log = daemon.log.read_text()
    assert f"cannot bind the DHT to UDP 127.0.0.1:{port}" in log and "Traceback" not in log


def test_second_daemon_on_same_state_is_refused(running: Daemon) -> None:
    res = running.cli("node", "run", "--port", "1")
    assert res.returncode == 1 and "already using the state directory" in res.stderr
    assert running.healthy()


def test_corrupt_config_names_file_and_line(daemon: Daemon) -> None:
    cfg = daemon.config_dir / "config.toml"
    cfg.write_text("[api]\nport = = 3\n")
    res = daemon.cli("status")
    assert res.returncode == 1 and str(cfg) in res.stderr and "line 2" in res.stderr


def test_unwritable_state_dir(daemon: Daemon, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    daemon.env["SPORE_STATE_DIR"] = str(blocker / "state")
    res = daemon.cli("node", "run")
    assert res.returncode == 1 and "state directory" in res.stderr


def test_dna_encoder_mismatch_refuses_to_start_and_keeps_data(daemon: Daemon) -> None:
    from p2pnode import dna as dna_mod
    from p2pnode.identity import load_or_create

    daemon.cli_json("init")
    identity, _ = load_or_create(daemon.state_dir)
    wrong = dna_mod.found(identity, swarm="w", encoder_name="other", encoder_sha256="0" * 64,
                          dim=384, created_ms=1)
    dna_mod.save(daemon.state_dir, wrong)
    res = daemon.cli("node", "run")
    assert res.returncode == 1 and "encoder" in res.stderr and "sha256 0000" in res.stderr
    assert (daemon.state_dir / "node_identity.key").exists()


def test_beyond_loopback_writes_need_the_token(daemon: Daemon) -> None:
    daemon.env["SPORE_HOST"] = "0.0.0.0"
    daemon.start()
    token = daemon.state_dir / "api.token"
    assert token.exists() and (token.stat().st_mode & 0o777) == 0o600
    req = urllib.request.Request(daemon.url + "/v1/teach", method="POST",
                                 data=json.dumps({"text": "no token, no write"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 401 and "api.token" in json.loads(refused.value.read())["error"]
    assert daemon.http("GET", "/v1/status")[0] == 200  # with the token (Daemon.http sends it)
    assert daemon.cli_json("teach", "the CLI sends the token")["new"]
    daemon.stop()
