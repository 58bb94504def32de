"""The MCP server (p2pnode.mcp) with the SDK's own client, over both of its
transports, against a real daemon: `spore mcp` on stdio, and /mcp on the
local API; then /mcp against web pages and callers without the token."""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp.test_utils import make_mocked_request
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from p2pnode import api
from tests.conftest import SPORE, Daemon, make_daemon

TOOLS = {"remember", "recall", "rate", "forget", "list_memories", "open_memory", "status"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "test", "version": "0"}}}


@asynccontextmanager
async def connect(d: Daemon, transport: str, headers: dict[str, str] | None = None
                  ) -> AsyncIterator[Client]:
    """The SDK's client, connected to `d` by `spore mcp` or by its /mcp."""
    server: Any
    if transport == "stdio":
        server = StdioServerParameters(command=SPORE, args=["mcp"], env=d.env)
    else:
        server = streamable_http_client(f"{d.url}/mcp", http_client=httpx2.AsyncClient(
            headers=headers, timeout=httpx2.Timeout(30, read=120)))
    async with Client(server) as client:
        yield client


def run(d: Daemon, transport: str, body: Callable[[Client], Awaitable[Any]],
        headers: dict[str, str] | None = None) -> Any:
    async def go() -> Any:
        async with connect(d, transport, headers) as client:
            return await body(client)
    return asyncio.run(go())


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error
    return " ".join(getattr(c, "text", "") for c in result.content)


def post(d: Daemon, path: str, body: Any, headers: dict[str, str],
         method: str = "POST") -> tuple[int, str]:
    """One raw request with exactly the headers a test wants."""
    sent = {"Host": f"127.0.0.1:{d.port}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream", **headers}
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                     headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def texts(d: Daemon) -> list[str]:
    return [m["text"] for m in d.json("GET", "/v1/memories?limit=1000")["memories"]]


# -- both transports: the tools, on a real daemon ------------------------------------
@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_tools_are_listed_with_bounded_inputs(running: Daemon, transport: str) -> None:
    tools = {t.name: t for t in run(running, transport,
                                    lambda c: c.list_tools()).tools}
    assert set(tools) >= TOOLS
    recall = tools["recall"].input_schema["properties"]
    assert recall["top"]["maximum"] == 20 and recall["question"]["maxLength"] > 0
    assert tools["remember"].input_schema["required"] == ["text"]
    assert tools["open_memory"].input_schema["properties"]["memory_id"]["pattern"]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_remember_recall_rate_open_and_status(running: Daemon, transport: str) -> None:
    fact = f"The {transport} spare key of the blue shed hangs behind the calendar."

    async def body(c: Client) -> None:
        taught = ok(await c.call_tool("remember", {"text": fact, "source": "test chat"}))
        assert taught["new"] is True and len(taught["id"]) == 64
        again = ok(await c.call_tool("remember", {"text": fact, "source": "test chat"}))
        assert again == {"id": taught["id"], "new": False}
        answer = ok(await c.call_tool("recall", {"question":
                                                 f"where is the {transport} shed key?"}))
        assert answer["answer"] == fact and answer["answer_id"]
        assert 0.0 <= answer["confidence"] <= 1.0
        source = answer["sources"][0]
        assert source["id"] == taught["id"] and source["origin"] == "test chat"
        rated = ok(await c.call_tool("rate", {"answer_id": answer["answer_id"], "vote": "up"}))
        assert rated["memory_id"] == taught["id"] and rated["up"] >= 1
        opened = ok(await c.call_tool("open_memory", {"memory_id": taught["id"]}))
        assert opened["text"] == fact and opened["up"] >= 1
        listed = ok(await c.call_tool("list_memories", {"limit": 100}))
        assert taught["id"] in [m["id"] for m in listed["memories"]]
        status = ok(await c.call_tool("status", {}))
        assert status["memories"] >= 1 and status["node_id"]

    run(running, transport, body)
    assert fact in texts(running)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_forget_takes_a_memory_out_of_answers(running: Daemon, transport: str) -> None:
    secret = f"The {transport} guest Wi-Fi password is hunter2-{transport}."

    async def body(c: Client) -> tuple[dict[str, Any], str, dict[str, Any]]:
        mid = ok(await c.call_tool("remember", {"text": secret}))["id"]
        gone = ok(await c.call_tool("forget", {"memory_id": mid}))
        opened = error_text(await c.call_tool("open_memory", {"memory_id": mid}))
        asked = ok(await c.call_tool("recall", {"question": f"{transport} Wi-Fi password?"}))
        return gone, opened, asked

    gone, opened, asked = run(running, transport, body)
    assert gone["forgotten"] == "everywhere"
    assert "no memory with id" in opened
    assert secret not in [s["text"] for s in asked["sources"]]
    assert secret not in texts(running)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_errors_are_tool_errors_with_the_daemons_message(running: Daemon,
                                                         transport: str) -> None:
    async def body(c: Client) -> list[str]:
        return [error_text(await c.call_tool(name, args)) for name, args in (
            ("rate", {"answer_id": "0123456789abcdef", "vote": "up"}),
            ("open_memory", {"memory_id": "ab" * 32}),
            ("remember", {"text": "x", "source": "two\nlines"}),
            ("recall", {"question": "too many", "top": 21}),
            ("rate", {"answer_id": "not hex", "vote": "up"}))]

    unknown, missing, origin, top, bad_id = run(running, transport, body)
    assert "no answer with id" in unknown
    assert "no memory with id" in missing
    assert "origin" in origin and "control characters" in origin  # the API's own word
    assert "top" in top and "x" not in texts(running)
    assert "answer_id" in bad_id


def test_stdio_without_a_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    nobody = make_daemon(tmp_path)  # its port: nothing listens there
    out = run(nobody, "stdio", lambda c: c.call_tool("status", {}))
    assert "no spore daemon answers" in error_text(out) and "spore node run" in error_text(out)


def test_stdio_takes_the_groups_options(running: Daemon) -> None:
    env = {k: v for k, v in running.env.items() if k not in ("SPORE_PORT", "SPORE_STATE_DIR")}
    server = StdioServerParameters(command=SPORE, env=env, args=[
        "--state-dir", str(running.state_dir), "--port", str(running.port), "mcp"])

    async def go() -> CallToolResult:
        async with Client(server) as client:
            return await client.call_tool("status", {})

    assert ok(asyncio.run(go()))["node_id"] == running.json("GET", "/v1/status")["node_id"]


# -- /mcp under the API's rules -------------------------------------------------------
def test_mcp_from_another_site_is_refused_and_nothing_stored(running: Daemon) -> None:
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "remember", "arguments": {"text": "planted by a page"}}}
    for headers in ({"Origin": "https://evil.example"}, {"Host": "evil.example"},
                    {"Host": f"evil.example:{running.port}"},
                    {"Sec-Fetch-Site": "cross-site"}):
        for body in (INIT, call):
            code, text = post(running, "/mcp", body, headers)
            assert code == 403 and "refused" in json.loads(text)["error"], headers
    code, _ = post(running, "/mcp", call, {"Content-Type": "text/plain"})
    assert code == 415
    assert "planted by a page" not in texts(running)
    assert refused(running, "origin") >= 2


def refused(d: Daemon, reason: str) -> int:
    return int(d.json("GET", "/v1/status")["api"]["refused"].get(reason, 0))


def test_mcp_takes_post_only(running: Daemon) -> None:
    """Stateless: a GET would be an event stream that nothing is ever sent on,
    held open (and holding the daemon's shutdown) until the client leaves."""
    for method in ("GET", "DELETE"):
        code, text = post(running, "/mcp", None, {}, method=method)
        assert code == 405 and "Method Not Allowed" in json.loads(text)["error"], method


def test_the_sdk_client_with_a_cross_site_origin_gets_nothing(running: Daemon) -> None:
    before = refused(running, "origin")
    with pytest.raises(Exception, match="unhandled errors"):  # the SDK's error, in a group
        run(running, "http", lambda c: c.list_tools(),
            headers={"Origin": "https://evil.example"})
    assert refused(running, "origin") > before  # the gate turned it away


def test_beyond_loopback_mcp_needs_the_token(daemon: Daemon) -> None:
    daemon.env["SPORE_HOST"] = "0.0.0.0"
    daemon.start()
    code, text = post(daemon, "/mcp", INIT, {})
    assert code == 401 and "api.token" in json.loads(text)["error"]
    code, _ = post(daemon, "/mcp", INIT, {"Authorization": "Bearer not-the-token"})
    assert code == 401
    token = {"Authorization": f"Bearer {(daemon.state_dir / 'api.token').read_text().strip()}"}

    async def body(c: Client) -> str:
        return str(ok(await c.call_tool("remember", {"text": "kept beyond loopback"}))["id"])

    mid = run(daemon, "http", body, headers=token)  # the tools call the API with it
    assert mid in [m["id"] for m in daemon.json("GET", "/v1/memories")["memories"]]
    out = run(daemon, "stdio", lambda c: c.call_tool("status", {}))  # reads api.token
    assert ok(out)["memories"] == 1
    daemon.stop()


# -- without the extra ------------------------------------------------------------------
def test_without_the_extra_spore_mcp_says_how_to_install_it(running: Daemon) -> None:
    import subprocess

    code = "import sys; sys.modules['mcp'] = None; from cli.main import main; main()"
    res = subprocess.run([sys.executable, "-c", code, "mcp"], env=running.env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "pip install 'sporemind[mcp]'" in res.stderr
    assert res.stdout == ""


def test_without_the_extra_mcp_answers_501(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "mcp" or n.startswith("mcp.")]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "p2pnode.mcp", raising=False)
    resp = asyncio.run(api.mcp(make_mocked_request("POST", "/mcp")))
    assert resp.status == 501 and b"sporemind[mcp]" in resp.body  # type: ignore[attr-defined]
