"""The local API against web pages and hostile local clients, on a real daemon:
one test per vector (cross-site bodies, DNS rebinding, Origin, Sec-Fetch-Site,
the token, faults without a clear word), plus the pure pieces of the gate."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from p2pnode.api import Faults, errors_as_json, host_name, json_object, printable, same_origin
from p2pnode.errors import BadRequest, DiskFull, SporeError
from tests.conftest import Daemon, make_daemon, wait_for

Reply = tuple[int, dict[str, str], Any]


def call(d: Daemon, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None, token: bool = False) -> Reply:
    """One request with exactly the headers a test wants (Host included)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    sent = {"Host": f"127.0.0.1:{d.port}", "Content-Type": "application/json",
            **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {(d.state_dir / 'api.token').read_text().strip()}"
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    try:
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        assert resp.getheader("Content-Type", "").startswith("application/json"), resp.status
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())
    finally:
        conn.close()


def stored_texts(d: Daemon) -> list[str]:
    return [m["text"] for m in call(d, "GET", "/v1/memories?limit=1000")[2]["memories"]]


# -- cross-site bodies: a page may post text/plain or a form without asking ------
def test_a_text_plain_teach_is_refused_and_nothing_stored(running: Daemon) -> None:
    code, _, out = call(running, "POST", "/v1/teach", raw=b'{"text": "planted by a page"}',
                        headers={"Content-Type": "text/plain"})
    assert code == 415 and "application/json" in out["error"]
    assert "planted by a page" not in stored_texts(running)


def test_a_form_encoded_post_is_refused(running: Daemon) -> None:
    code, _, out = call(running, "POST", "/v1/teach", raw=b"text=planted+by+a+form",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 415 and "application/json" in out["error"]
    assert not any("form" in t for t in stored_texts(running))


# -- DNS rebinding: a page of evil.example resolved to 127.0.0.1 ---------------------
def test_a_foreign_host_is_refused(running: Daemon) -> None:
    code, _, out = call(running, "GET", "/v1/memories", headers={"Host": "evil.example"})
    assert code == 403 and "DNS rebinding" in out["error"]
    code, _, _ = call(running, "POST", "/v1/teach", {"text": "rebound"},
                      headers={"Host": f"evil.example:{running.port}"})
    assert code == 403 and "rebound" not in stored_texts(running)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "localhost",
                                  "[::1]", "[::1]:{port}", "LOCALHOST.:{port}"])
def test_the_apis_own_host_names_are_served(running: Daemon, host: str) -> None:
    assert call(running, "GET", "/v1/dna", headers={"Host": host.format(port=running.port)}
                )[0] == 200


# -- Origin and Sec-Fetch-Site ---------------------------------------------------------
@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:1",
                                    "https://127.0.0.1:{port}", "http://evil.example:{port}"])
def test_a_cross_site_origin_is_refused(running: Daemon, origin: str) -> None:
    code, _, out = call(running, "POST", "/v1/teach", {"text": "from another origin"},
                        headers={"Origin": origin.format(port=running.port)})
    assert code == 403 and "Origin" in out["error"]
    assert "from another origin" not in stored_texts(running)


def test_the_apis_own_origin_is_served(running: Daemon) -> None:
    for origin in (f"http://localhost:{running.port}", f"http://127.0.0.1:{running.port}",
                   f"http://[::1]:{running.port}"):
        assert call(running, "GET", "/v1/dna", headers={"Origin": origin})[0] == 200


def test_sec_fetch_site_cross_site_is_refused(running: Daemon) -> None:
    code, _, out = call(running, "GET", "/v1/memories", headers={"Sec-Fetch-Site": "cross-site"})
    assert code == 403 and "cross-site" in out["error"]
    for site in ("same-origin", "none"):
        assert call(running, "GET", "/v1/dna", headers={"Sec-Fetch-Site": site})[0] == 200


# -- the token ---------------------------------------------------------------------------
def test_dna_changes_need_the_token_on_loopback(running: Daemon) -> None:
    token = running.state_dir / "api.token"
    assert (token.stat().st_mode & 0o777) == 0o600
    before = call(running, "GET", "/v1/dna")[2]["version"]
    code, headers, out = call(running, "POST", "/v1/dna", {"set": {"mutation_sigma": 1.0}})
    assert code == 401 and "api.token" in out["error"] and "WWW-Authenticate" in headers
    code, _, _ = call(running, "POST", "/v1/dna", {"set": {"mutation_sigma": 1.0}},
                      headers={"Authorization": "Bearer not-the-token"})
    assert code == 401 and call(running, "GET", "/v1/dna")[2]["version"] == before
    code, _, out = call(running, "POST", "/v1/dna", {"set": {"division_threshold": 41}},
                        token=True)
    assert code == 200 and out["version"] == before + 1
    assert running.cli_json("dna", "update", "--set", "division_threshold=42")[
        "division_threshold"] == 42  # the CLI sends the token on loopback too


def test_dna_update_says_when_the_token_cannot_be_read(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    (d.state_dir / "api.token").mkdir(parents=True)  # unreadable as a file, even by root
    res = d.cli("dna", "update", "--set", "division_threshold=30")
    assert res.returncode == 1
    assert "cannot read" in res.stderr and "run as the user that runs the daemon" in res.stderr


def test_beyond_loopback_every_route_but_healthz_needs_the_token(daemon: Daemon) -> None:
    daemon.env["SPORE_HOST"] = "0.0.0.0"
    daemon.start()
    assert call(daemon, "POST", "/v1/teach", {"text": "secret memory"}, token=True)[0] == 201
    for path in ("/v1/memories", "/v1/status", "/v1/openapi.json", "/v1/nowhere"):
        code, _, out = call(daemon, "GET", path)
        assert code == 401 and "api.token" in out["error"], path
    assert call(daemon, "GET", "/healthz")[0] == 200
    assert "secret memory" in [m["text"] for m in call(daemon, "GET", "/v1/memories",
                                                       token=True)[2]["memories"]]
    assert daemon.cli_json("status")["memories"] == 1  # the CLI sends the token
    daemon.stop()


# -- what the document promises ------------------------------------------------------------
def test_405_names_the_allowed_methods(running: Daemon) -> None:
    code, headers, out = call(running, "TRACE", "/v1/teach")
    assert code == 405 and "POST" in headers["Allow"] and out["error"]


def test_unknown_fields_and_non_integers_are_refused(running: Daemon) -> None:
    code, _, out = call(running, "POST", "/v1/teach", {"text": "x", "admin": True})
    assert code == 400 and "'admin'" in out["error"]
    assert call(running, "POST", "/v1/ingest", {"chunks": [{"text": "x", "id": 1}]})[0] == 400
    assert call(running, "POST", "/v1/ask", {"question": "x", "top": 2.5})[0] == 400
    assert call(running, "POST", "/v1/ask", {"question": "x", "top": 21})[0] == 400
    assert call(running, "POST", "/v1/ask", {"question": "x", "top": 11.0})[0] == 200
    assert call(running, "POST", "/v1/ask", raw=b'{"question": "x", "top": NaN}')[0] == 400
    assert call(running, "POST", "/v1/teach", raw=b'{"text": "\\ud800"}')[0] == 400
    assert call(running, "POST", "/v1/teach", raw=b"[" * 100_000)[0] == 400
    assert call(running, "POST", "/v1/teach", {"text": "y", "origin": "a\nb"})[0] == 400
    assert call(running, "POST", "/v1/teach", {"text": "y", "origin": "o" * 1025})[0] == 400
    assert call(running, "GET", "/v1/memories?limit=1001")[0] == 400
    assert call(running, "GET", "/v1/memories/" + "AB" * 32)[0] == 400


def test_a_very_long_url_gets_a_json_error(running: Daemon) -> None:
    code, _, out = call(running, "GET", "/v1/memories?x=" + "a" * 20_000)
    assert code == 400 and "malformed HTTP request" in out["error"]


# -- faults without a clear word --------------------------------------------------------------
GARBAGE = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",
           b"GET /\x1b[31mred\nINJECTED 12:00 CRITICAL fake line HTTP/1.1\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\x00: y\r\n\r\n",
           b"POST /v1/teach HTTP/1.1\r\nContent-Length: -5\r\n\r\n"]


def test_malformed_requests_are_counted_not_logged_one_by_one(running: Daemon) -> None:
    before_log = running.log.read_bytes()
    before = call(running, "GET", "/v1/status")[2]["api"]["malformed_requests"]
    for i in range(200):
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as s:
            s.sendall(GARBAGE[i % len(GARBAGE)])
            while s.recv(4096):
                pass
    wait_for(lambda: call(running, "GET", "/v1/status")[2]["api"]["malformed_requests"]
             >= before + 200, 10, "the 200 malformed requests to be counted")
    new = running.log.read_bytes()[len(before_log):]
    assert len(new.splitlines()) <= 3, new.decode(errors="replace")
    assert b"Traceback" not in new and b"\x1b" not in new
    assert not any(line.startswith(b"INJECTED") for line in new.splitlines())


def _answer(exc: Exception) -> tuple[int, dict[str, Any]]:
    async def handler(_: Any) -> Any:
        raise exc

    resp = asyncio.run(errors_as_json(make_mocked_request("POST", "/v1/teach"), handler))
    return resp.status, json.loads(resp.text)  # type: ignore[attr-defined]


def test_errors_with_a_status_keep_it_and_their_message() -> None:
    assert _answer(DiskFull("the disk is full: free space")) == (
        507, {"error": "the disk is full: free space"})

    class Conflict(SporeError):
        status = 409

    assert _answer(Conflict("busy")) == (409, {"error": "busy"})
    assert _answer(SporeError("plain")) == (500, {"error": "plain"})
    assert _answer(RuntimeError("secret detail"))[0] == 500
    assert "secret detail" not in _answer(RuntimeError("secret detail"))[1]["error"]


# -- the pure pieces -------------------------------------------------------------------------
def test_faults_log_one_line_per_minute_and_count_all() -> None:
    now = [0.0]
    faults = Faults(lambda: now[0])
    lines = [faults.malformed_line("bad") for _ in range(100)]
    assert sum(line is not None for line in lines) == 1 and faults.malformed == 100
    now[0] = 61.0
    line = faults.malformed_line("bad")
    assert line is not None and "101 such" in line and "99 not logged" in line


def test_printable_escapes_what_a_client_sent() -> None:
    assert printable("a\nb\r\x1b[2J\u202e") == "a\\nb\\r\\x1b[2J\\u202e"
    assert printable("x" * 500, 10) == "x" * 10 + "…"


@pytest.mark.parametrize(("header", "name"), [
    ("LocalHost:7150", "localhost"), ("[::1]:80", "::1"), ("[::ffff:127.0.0.1]", "127.0.0.1"),
    ("evil.example.", "evil.example"), ("127.0.0.1", "127.0.0.1"), ("::1", "::1")])
def test_host_names_are_normalised(header: str, name: str) -> None:
    assert host_name(header) == name


def test_same_origin_wants_http_our_name_and_our_port() -> None:
    names = {"localhost", "127.0.0.1", "::1"}
    assert same_origin("http://localhost:7150", names, 7150)
    assert same_origin("http://[::1]:7150", names, 7150)
    assert same_origin("http://localhost", names, 80)
    for bad in ("https://localhost:7150", "http://localhost:7151", "null", "http://x:7150",
                "http://localhost:99999", "http://localhost:7150/path"):
        assert not same_origin(bad, names, 7150), bad


def test_json_bodies_are_strict() -> None:
    assert json_object(b'{"text": "x"}', "text") == {"text": "x"}
    for raw in (b'{"text": "x", "extra": 1}', b'{"text": Infinity}', b'["text"]',
                b'{"text": "\\udc00"}', b'{"text": "\xed\xa0\x80"}'):
        with pytest.raises(BadRequest):
            json_object(raw, "text")
