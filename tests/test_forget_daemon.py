"""Forget, export and import with real daemons (real HTTP, real UDP, the CLI):
a memory its author forgets with `spore forget` vanishes from another
spore's answers once gossip brings the tombstone; `spore export` of the
author's spore, `spore import` into a fresh spore, and that one answers alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, make_daemon, start_swarm, stop_all, wait_for

FORGET = ("What is the Wi-Fi password?", "The Wi-Fi password is hunter2-correct-horse.")
KEEP = ("Which tool shows the kernel log?", "journalctl -k shows the kernel ring buffer.")


@pytest.fixture(scope="module")
def spores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    out = [make_daemon(tmp_path_factory.mktemp(f"f{i}")) for i in range(2)]
    for d in out:
        d.env.update(SPORE_GOSSIP_INTERVAL="0.25")
    start_swarm(out)
    yield out
    stop_all(out)


def _answer(d: Daemon, question: str) -> str | None:
    got = d.json("POST", "/v1/ask", {"question": question, "top": 3})
    return None if got["answer"] is None else str(got["answer"])


def test_a_forgotten_memory_vanishes_from_another_spores_answers(
        spores: list[Daemon], tmp_path: Path) -> None:
    author, other = spores
    mid = author.json("POST", "/v1/teach", {"text": FORGET[1], "question": FORGET[0]})["id"]
    author.json("POST", "/v1/teach", {"text": KEEP[1], "question": KEEP[0]})
    wait_for(lambda: _answer(other, FORGET[0]) == FORGET[1], 60, "the other spore to find it")
    res = author.cli("forget", mid, "--json", check=True)
    assert json.loads(res.stdout)["forgotten"] == "everywhere"
    assert _answer(author, FORGET[0]) != FORGET[1]
    wait_for(lambda: _answer(other, FORGET[0]) != FORGET[1], 60,
             "the tombstone to reach the other spore")
    assert _answer(other, KEEP[0]) == KEEP[1]
    code, _ = other.http("GET", f"/v1/memories/{mid}")
    assert code == 404
    counters = other.json("GET", "/v1/status")["forgetting"]
    assert counters["tombstones"] >= 1

    # export the author's spore, import it into a fresh one: the same answer
    dump = tmp_path / "author.jsonl"
    author.cli("export", str(dump), check=True)
    kinds = [json.loads(line)["kind"] for line in dump.read_text().splitlines()]
    assert kinds.count("memory") == 1 and kinds.count("tombstone") == 1, kinds
    fresh = make_daemon(tmp_path / "fresh")
    fresh.start()
    try:
        res = fresh.cli("import", str(dump), "--json", check=True)
        summary = json.loads(res.stdout)
        assert summary["imported"] == 1, summary
        assert summary["refused"] == {"tombstone_swarm": 1}, summary  # another swarm's
        assert _answer(fresh, KEEP[0]) == KEEP[1]
        assert _answer(fresh, FORGET[0]) != FORGET[1]
        again = json.loads(fresh.cli("import", str(dump), "--json", check=True).stdout)
        assert again["duplicate"] == 1 and again["imported"] == 0
    finally:
        assert fresh.stop() == 0


def test_a_page_from_another_site_cannot_forget_import_or_export(
        spores: list[Daemon]) -> None:
    """A web page in the user's browser reaches the local API: a cross-site
    forget or import is refused before anything changes, and export (it holds
    the questions asked here) needs the token even on loopback."""
    import urllib.error
    import urllib.request

    d = spores[0]
    mid = d.cli_json("teach", "the spare key is under the blue flowerpot")["id"]

    def call(method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
        req = urllib.request.Request(d.url + path, data=body or None, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    hostile = {"Content-Type": "application/json", "Origin": "http://evil.example"}
    forget = json.dumps({"memory_id": mid}).encode()
    assert call("POST", "/v1/forget", forget, hostile) == 403
    assert call("POST", "/v1/forget", forget, {"Content-Type": "text/plain"}) == 415
    assert call("POST", "/v1/import", b'{"lines": []}', hostile) == 403
    assert call("GET", "/v1/export", b"", {}) == 401
    code, got = d.http("GET", f"/v1/memories/{mid}")
    assert code == 200 and got["id"] == mid  # nothing forgotten
