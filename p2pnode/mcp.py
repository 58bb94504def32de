"""A spore's memory as tools for AI assistants: an MCP server with the
official SDK (`mcp`, the optional extra ``sporemind[mcp]``; its server class
is `MCPServer`, FastMCP's name in mcp 2).

One set of tools, two transports, and every tool call is a call of the local
API (`/v1/teach`, `/v1/ask`, ...), exactly as the CLI makes it:

- stdio, `spore mcp` (`run_stdio`): a process an assistant starts; it calls the
  running daemon at the configured address with the token from the state
  directory, read at each call (the daemon may start after the assistant).
  The SDK points fd 1 at stderr while it serves: logs never reach the wire.
- streamable HTTP at ``/mcp`` of the local API (`serve_http`): the route
  passed the API's `gate` (Host, Origin, Sec-Fetch-Site, and the token beyond
  loopback) like any other, and its tools call the API back at the address
  the request came in on, with the caller's Authorization header.

Why the tools call the API over HTTP even inside the daemon, rather than the
`Spore` methods behind it: the checks a request gets live in one place, the
API's gate and handlers (fields, sizes, origins, ids, which routes need the
token), so a tool cannot skip one of them, now or after the next change to
the API; a caller without the token gets, through /mcp, exactly what it gets
without it from the API itself. The cost is one loopback request per tool
call (about a millisecond, against the embedding and ranking of an ask).

Why the bridge is this one: the SDK's HTTP transport is ASGI and the API is
aiohttp. Each /mcp request becomes one ASGI scope handed to a fresh
`StreamableHTTPSessionManager` in stateless mode with JSON answers: no MCP
session lives between requests (nothing to expire, bound or clean up at
shutdown, no background task), the tools need no server-to-client requests
(so /mcp takes POST only: the SDK would hold a GET open as an event stream
on which nothing can ever come, and delay the daemon's shutdown by it),
and a daemon that never serves MCP never imports the SDK (~28 MB, 0.6 s): the
API loads this module at the first /mcp request. A second HTTP server for
the SDK (uvicorn on another port) would have needed its own copy of the gate.
The SDK's own DNS-rebinding check is off: the gate already did it with the
API's names (the SDK compares strings, not normalised names).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, Literal

import aiohttp
from aiohttp import web
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.types import Message, Scope

from p2pnode.client import Client
from p2pnode.config import Config
from p2pnode.openapi import MAX_ORIGIN

__all__ = ["LocalApi", "build_server", "run_stdio", "serve_http"]

log = logging.getLogger("spore.mcp")

TIMEOUT_S = 120.0  # as the CLI's client: an ask on a slow device, a teach of a long text
MAX_TEXT_CHARS = 16 * 1024  # the daemon's own limit is max_text_bytes of UTF-8 (16 KiB)
MAX_TOP = 20  # p2pnode.api.MAX_TOP
MAX_LIST = 100
MAX_OFFSET = 10**9  # p2pnode.api.MAX_OFFSET

INSTRUCTIONS = """\
Sporemind is the user's own memory, kept by a daemon (a spore) on their devices and \
shared with their swarm. Use `recall` when a question may have been answered before \
(it returns an answer, a confidence and its sources, or none); use `remember` when \
the user asks you to keep something. When the user says whether a recalled answer was \
right, `rate` it with its answer id: that is how the swarm learns which memories answer \
which questions."""

# -- what a tool may be given (the SDK publishes these bounds as the input schema) --------
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS,
                            description="the text to remember (one fact, note or passage)")]
Question = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS,
                                description="the question, in the user's words")]
AskedAs = Annotated[str, Field(max_length=MAX_TEXT_CHARS,
                               description="the question this text answers, if any")]
Source = Annotated[str, Field(min_length=1, max_length=MAX_ORIGIN,
                              description="where the text came from, one line "
                                          "(a URL, a file, 'conversation with <assistant>')")]
Top = Annotated[int, Field(ge=1, le=MAX_TOP, description="how many sources to return")]
AnswerId = Annotated[str, Field(pattern=r"^[0-9a-f]{1,64}$",
                                description="the answer_id that recall returned")]
MemoryId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$",
                                description="a memory id (64 hex digits)")]
Vote = Annotated[Literal["up", "down"], Field(description="up: it answered the question")]
Limit = Annotated[int, Field(ge=1, le=MAX_LIST, description="how many memories")]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET, description="how many newest to skip")]
Json = dict[str, Any]


# -- the one way a tool reaches the spore --------------------------------------------------
class LocalApi:
    """The daemon's local API at `base`, called as the CLI calls it; its
    refusals become tool errors carrying the daemon's own message."""

    def __init__(self, base: str, authorization: str | None, *, no_token: str = "") -> None:
        self.base = base
        self.authorization = authorization
        self.no_token = no_token  # why there is no token, said with a 401

    async def get(self, path: str) -> Json:
        return await self.call("GET", path)

    async def post(self, path: str, body: Json) -> Json:
        return await self.call("POST", path, body)

    async def call(self, method: str, path: str, body: Json | None = None) -> Json:
        headers = {"Content-Type": "application/json"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        data = None if body is None else json.dumps(body).encode()
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session, \
                    session.request(method, self.base + path, data=data,
                                    headers=headers) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError:
            raise ToolError(f"the spore daemon at {self.base} did not answer within "
                            f"{TIMEOUT_S:.0f} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ToolError(f"no spore daemon answers at {self.base} "
                            f"({exc or type(exc).__name__}); start one with: spore node run"
                            ) from None
        out = _decode(raw)
        if status >= 400:
            message = str(out.get("error") or f"HTTP {status}")
            if status == 401 and self.no_token:
                message += f" ({self.no_token})"
            raise ToolError(message)
        return out


def _decode(raw: bytes) -> Json:
    try:
        out = json.loads(raw)
    except ValueError:
        return {"error": raw[:200].decode(errors="replace")}
    return out if isinstance(out, dict) else {"result": out}


ApiFor = Callable[[Context], LocalApi]  # the API a tool call reaches (by its transport)


# -- the tools ----------------------------------------------------------------------------
def build_server(api_for: ApiFor) -> MCPServer:
    """The MCP server with the spore's tools; `api_for` says where each call goes."""
    server = MCPServer("sporemind", instructions=INSTRUCTIONS)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=ToolAnnotations(idempotent_hint=True, destructive_hint=False))
    async def remember(ctx: Context, text: Text, question: AskedAs = "",
                       source: Source = "mcp") -> Json:
        """Teach the spore a memory: signed by this device, stored durably, shared
        with the swarm. Returns its id, and whether it is new (the same text
        taught again is the same memory)."""
        return await api_for(ctx).post("/v1/teach", {"text": text, "question": question,
                                                     "origin": source})

    @server.tool(annotations=ToolAnnotations(destructive_hint=False, open_world_hint=True))
    async def recall(ctx: Context, question: Question, top: Top = 3) -> Json:
        """Ask the swarm's memory. Returns the answer and where it came from
        (`route`): "memory" (the best source's text), "generated" (a sentence or
        two in words from the sources, when a language model is configured and
        no memory was confident enough: `generated` holds its text, its
        citations [n] → the n-th source's memory id, and the model), or
        "unknown" (null); a confidence in 0..1, the sources with their
        provenance (memory id, origin, author, when), and an answer_id to rate it
        with (an answer in words rated up becomes a memory). The question's text
        never leaves this device through the swarm."""
        return await api_for(ctx).post("/v1/ask", {"question": question, "top": top})

    @server.tool(annotations=ToolAnnotations(destructive_hint=False))
    async def rate(ctx: Context, answer_id: AnswerId, vote: Vote) -> Json:
        """Rate a recalled answer: up if it answered the question, down if not.
        Rating again changes the vote. Returns the memory's votes and fitness."""
        return await api_for(ctx).post("/v1/rate", {"answer_id": answer_id, "vote": vote})

    @server.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True))
    async def forget(ctx: Context, memory_id: MemoryId) -> Json:
        """Forget a memory, when the user asks to. One this spore taught is forgotten
        by every spore of the swarm (a signed tombstone; a misbehaving peer may still
        keep a copy); anyone else's is hidden on this spore only. Says which
        ("everywhere", "here", "already")."""
        return await api_for(ctx).post("/v1/forget", {"memory_id": memory_id})

    @server.tool(annotations=read_only)
    async def list_memories(ctx: Context, limit: Limit = 20, offset: Offset = 0) -> Json:
        """The memories this spore holds, newest first: id, question, text, origin,
        author, created_ms."""
        return await api_for(ctx).get(f"/v1/memories?limit={limit}&offset={offset}")

    @server.tool(annotations=read_only)
    async def open_memory(ctx: Context, memory_id: MemoryId) -> Json:
        """One memory by id, with its up and down votes and its fitness."""
        return await api_for(ctx).get(f"/v1/memories/{memory_id}")

    @server.tool(annotations=read_only)
    async def status(ctx: Context) -> Json:
        """The spore's status: node id, swarm, how many memories it holds and
        indexes, votes, peers, agents, calibration."""
        return await api_for(ctx).get("/v1/status")

    return server


# -- stdio: `spore mcp` ---------------------------------------------------------------------
def run_stdio(cfg: Config) -> None:
    """Serve MCP on stdin/stdout until the assistant closes it; logs on stderr."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="spore mcp: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mcp").setLevel(logging.WARNING)

    def api_for(ctx: Context) -> LocalApi:
        client = Client(cfg)  # the token is read at each call: the daemon may start later
        return LocalApi(client.base, f"Bearer {client.token}" if client.token else None,
                        no_token=client.token_problem)

    build_server(api_for).run("stdio")


# -- streamable HTTP: /mcp on the local API ------------------------------------------------
_NO_REBINDING_CHECK = TransportSecuritySettings(enable_dns_rebinding_protection=False)


@cache
def _http_server() -> Server[Any]:
    """The tools for /mcp as the SDK's low-level server (what a session manager
    serves), built at the first request and shared by all: they keep no state."""
    logging.getLogger("mcp").setLevel(logging.WARNING)  # not two lines per request
    server = build_server(_api_of_request)
    server.streamable_http_app(stateless_http=True, json_response=True,
                               transport_security=_NO_REBINDING_CHECK)
    return server.session_manager.app


def _api_of_request(ctx: Context) -> LocalApi:
    """The API the /mcp request came in on (its local address), with its Authorization."""
    request = ctx.request_context.request
    if request is None:  # only the HTTP transport builds this server
        raise ToolError("this tool call came without its HTTP request")
    host, port = request.scope["server"]
    host = f"[{host}]" if ":" in host else host
    return LocalApi(f"http://{host}:{port}", request.headers.get("authorization"))


async def serve_http(request: web.Request) -> web.StreamResponse:
    """One /mcp request (it passed the API's gate), served by the SDK."""
    exchange = _Exchange(request, await request.read())  # bounded by the API's MAX_BODY
    manager = StreamableHTTPSessionManager(_http_server(), json_response=True, stateless=True,
                                           security_settings=_NO_REBINDING_CHECK)
    async with manager.run():
        await manager.handle_request(exchange.scope(), exchange.receive, exchange.send)
    return exchange.response()


class _Exchange:
    """One aiohttp request as an ASGI scope, its ASGI answer written back."""

    def __init__(self, request: web.Request, body: bytes) -> None:
        self.request = request
        self.body: bytes | None = body
        self.answer: web.StreamResponse | None = None
        self.done = asyncio.Event()

    def scope(self) -> Scope:
        r = self.request
        local = r.transport.get_extra_info("sockname") if r.transport else None
        peer = r.transport.get_extra_info("peername") if r.transport else None
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": f"{r.version.major}.{r.version.minor}", "method": r.method,
                "scheme": "http", "path": r.path, "raw_path": r.raw_path.encode(),
                "query_string": r.query_string.encode(), "root_path": "",
                "headers": [(k.lower(), v) for k, v in r.raw_headers],
                "client": (str(peer[0]), int(peer[1])) if peer else None,
                "server": (str(local[0]), int(local[1])) if local else None}

    async def receive(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.done.wait()  # nothing more comes: "disconnected" once answered
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.answer = web.StreamResponse(status=message["status"])
            for name, value in message.get("headers", []):
                self.answer.headers.add(name.decode("latin-1"), value.decode("latin-1"))
            await self.answer.prepare(self.request)
        elif message["type"] == "http.response.body" and self.answer is not None:
            await self.answer.write(message.get("body", b""))
            if not message.get("more_body", False):
                await self.answer.write_eof()
                self.done.set()

    def response(self) -> web.StreamResponse:
        if self.answer is None:
            log.error("the MCP server sent no answer to %s /mcp", self.request.method)
            return web.json_response({"error": "internal error; the daemon's log has the "
                                      "details"}, status=500)
        return self.answer
