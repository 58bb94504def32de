"""The local HTTP API (aiohttp): versioned JSON endpoints, the CLI's server.

Errors are JSON ``{"error": "...what to fix..."}``: our callers' mistakes
are 4xx, never a 500 with a traceback (those go to the log).

Web pages on this device reach the API too, so `gate` lets a request through
only with one of the API's own Host names (DNS rebinding), no cross-site
Origin or Sec-Fetch-Site, and a JSON body (a page may post text/plain or a
form without asking first). DNA and membership changes (who is in the
swarm: invitations, revocations) and exports (they hold the questions rated
here) need the token from the state directory even on loopback; beyond
loopback every route but /healthz and the dashboard's files (p2pnode.dashboard:
a page at /, a client of this API) does.
What aiohttp cannot hand to a route (an unparsable request, a line over its
limit) is answered in JSON too, and logged as one counted line at most every
LOG_EVERY_S (`ApiRunner`): a flood of garbage costs a counter, not the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from p2pnode import dashboard
from p2pnode import metrics as metrics_mod
from p2pnode.config import parse_peers
from p2pnode.errors import BadRequest, ConfigError, SporeError, StateError, TooLarge
from p2pnode.exchange import export_lines, import_lines
from p2pnode.node import Spore, TeachItem
from p2pnode.openapi import (
    DEFAULT_INVITE_TTL_S,
    MAX_INVITE_TTL_S,
    MAX_ORIGIN,
    MAX_WHY,
    MEMBER_ID,
    MIN_INVITE_TTL_S,
    OPENAPI,
    ORIGIN_CONTROL,
    WHY_CONTROL,
)

log = logging.getLogger("spore.api")

MAX_BODY = 4 * 1024 * 1024
MAX_INGEST_CHUNKS = 256
MAX_IMPORT_LINES = 1024
MAX_TOP = 20
MAX_LIMIT = 1000
MAX_OFFSET = 10**9
LOG_EVERY_S = 60.0  # at most one line a minute about requests aiohttp could not serve
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
TOKEN_HELP = ("send 'Authorization: Bearer <token>' with the token from api.token in the "
              "daemon's state directory (the CLI does, when run as the daemon's user)")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- what the API refused, and what aiohttp could not serve ------------------------
class Refused(BadRequest):
    """A request the gate turns away; `reason` is its counter in /v1/status."""

    def __init__(self, status: int, reason: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class Faults:
    """Refusals by reason, and the requests aiohttp could not serve (unparsable,
    a line over its limit): counted for /v1/status, logged as one line at most
    every LOG_EVERY_S (500 garbage requests once wrote 273 KB of tracebacks)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.refused: Counter[str] = Counter()
        self.malformed = 0
        self.unlogged = 0
        self._quiet_until = -math.inf

    def malformed_line(self, what: str) -> str | None:
        """Count one; the line to log now, or None while the log is quiet."""
        self.malformed += 1
        now = self.clock()
        if now < self._quiet_until:
            self.unlogged += 1
            return None
        self._quiet_until = now + LOG_EVERY_S
        since = f", {self.unlogged} not logged since the last line" if self.unlogged else ""
        self.unlogged = 0
        return f"{what} ({self.malformed} such requests since start{since})"

    def status(self) -> dict[str, Any]:
        return {"malformed_requests": self.malformed, "refused": dict(self.refused)}


_ORIGIN_CONTROL = re.compile(ORIGIN_CONTROL)
_WHY_CONTROL = re.compile(WHY_CONTROL)
_MEMBER_ID = re.compile(MEMBER_ID)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str, limit: int = 200) -> str:
    """`text` (a client's) fit for one log line: control and bidi characters
    escaped (no forged lines, no terminal escapes), at most `limit` characters."""
    cut = _CONTROL.sub(lambda m: ascii(m[0])[1:-1], text[:limit])
    return cut + ("…" if len(text) > limit else "")


# -- the gate -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Gate:
    """Who may call the API, decided once by make_app."""

    token: str = field(repr=False)
    loopback_only: bool
    names: frozenset[str]  # Host names meaning this API, besides the address called


def host_name(value: str) -> str:
    """The name in a Host header or URL: no port, no brackets, lower case,
    addresses in one spelling (``[::ffff:127.0.0.1]`` is ``127.0.0.1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    value = value.rstrip(".")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def same_origin(origin: str, names: Iterable[str], port: int) -> bool:
    """Whether a browser's Origin is this API itself (http, one of its names, its port)."""
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port or 80
    except ValueError:
        return False
    return (parts.scheme == "http" and not parts.path and origin_port == port
            and host_name(parts.hostname or "") in names)


def _local(request: web.Request) -> tuple[str, int]:
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    return (host_name(str(sock[0])), int(sock[1])) if sock else ("", 0)


def _check_browser(request: web.Request, gate: Gate) -> None:
    """Refuse what only a web page of another site would send."""
    address, port = _local(request)
    names = gate.names | {address}
    host = request.headers.get(hdrs.HOST)
    if host is not None and host_name(host) not in names:
        raise Refused(403, "host", f"Host {printable(host, 80)!r} is not this API (a name "
                      f"other than its own is refused, against DNS rebinding): call it as "
                      f"http://127.0.0.1:{port} or http://localhost:{port}")
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and not same_origin(origin, names, port):
        raise Refused(403, "origin", f"cross-site request refused: Origin "
                      f"{printable(origin, 80)!r} is not this API (http://127.0.0.1:{port})")
    if request.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        raise Refused(403, "cross_site", "cross-site request refused (Sec-Fetch-Site: "
                      "cross-site): web pages of other sites may not call this API")


def _check_token(request: web.Request, gate: Gate) -> None:
    handler = request.match_info.handler
    if handler in (healthz, dashboard.serve) or (
            gate.loopback_only and handler not in TOKEN_ROUTES):
        return
    scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(errors="replace"), gate.token.encode()):
        why = ("DNA and membership changes" if gate.loopback_only
               else "this API (bound beyond loopback)")
        raise Refused(401, "token", f"{why} need the API token: {TOKEN_HELP}",
                      {hdrs.WWW_AUTHENTICATE: 'Bearer realm="spore"'})


def _check_json(request: web.Request) -> None:
    if (request.method in ("POST", "PUT", "PATCH", "DELETE")
            and request.match_info.http_exception is None
            and request.content_type != "application/json"):
        got = request.headers.get(hdrs.CONTENT_TYPE, "none")
        raise Refused(415, "content_type", f"the body must be JSON, sent with 'Content-Type: "
                      f"application/json' (got {printable(got, 80)!r}); no other type is "
                      "taken, so that web pages cannot post to this API")


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Browsers' cross-site and rebinding requests, the token, JSON bodies only."""
    try:
        _check_browser(request, request.app[GATE_KEY])
        _check_token(request, request.app[GATE_KEY])
        _check_json(request)
    except Refused as exc:
        request.app[FAULTS_KEY].refused[exc.reason] += 1
        raise
    return await handler(request)


# -- errors as JSON -----------------------------------------------------------------
def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body over the {MAX_BODY} byte limit")
    except web.HTTPException as exc:
        if exc.status >= 400:
            allow: dict[str, str] | None = (
                {hdrs.ALLOW: exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else None)
            return _error(exc.status, f"{exc.reason}: {request.method} {request.path} "
                          "(see GET /v1/openapi.json for the endpoints)", allow)
        raise
    except SporeError as exc:
        status = getattr(exc, "status", 500)
        status = status if isinstance(status, int) and 400 <= status <= 599 else 500
        if status >= 500:
            log.error("%s %s: %s", request.method, printable(request.path), printable(str(exc)))
        return _error(status, str(exc), getattr(exc, "headers", None))
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, printable(request.path))
        return _error(500, "internal error; the daemon's log has the details")


class _Connection(web.RequestHandler):
    """aiohttp's connection handler, with our word for what it cannot route."""

    def __init__(self, manager: web.Server, *, faults: Faults, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.faults = faults

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        what = message or (f"{type(exc).__name__}: {exc}" if exc else HTTPStatus(status).phrase)
        self.log_exception("%d for a request from %s: %s", status, request.remote, what)
        if request.writer.output_size > 0:  # as aiohttp: too late for an answer
            raise ConnectionError("response already started; cannot send the error")
        text = (f"malformed HTTP request: {printable(what)}" if status < 500 else
                "internal error; the daemon's log has the details")
        resp = _error(status, text)
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        text = str(args[0]) % args[1:] if args else "error"
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException):
            text += f" ({type(exc).__name__}: {exc})"
        line = self.faults.malformed_line(printable(text, 300))
        if line is not None:
            log.warning("%s", line)


class _Server(web.Server):
    def __init__(self, made: web.Server, faults: Faults) -> None:
        super().__init__(made.request_handler, request_factory=made.request_factory,
                         handler_cancellation=made.handler_cancellation,
                         loop=asyncio.get_running_loop(), **made._kwargs)
        self.faults = faults

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._loop, faults=self.faults, **self._kwargs)


class ApiRunner(web.AppRunner):
    """The AppRunner for make_app's application: aiohttp's own errors (an
    unparsable request, an over-long URL) answered in JSON and logged as one
    counted line instead of a traceback each."""

    async def _make_server(self) -> web.Server:
        return _Server(await super()._make_server(), self.app[FAULTS_KEY])


# -- bodies and fields ------------------------------------------------------------------
_KINDS: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def json_object(raw: bytes, *fields: str) -> dict[str, Any]:
    """A JSON object holding only `fields` (strict UTF-8, no NaN, no lone surrogate)."""
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_no_constant)
        if "\\u" in text:  # a lone surrogate is no text: it cannot be stored or sent
            json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {printable(str(exc), 120)}") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return _only(body, fields, "the body")


def _only(obj: dict[str, Any], fields: tuple[str, ...], where: str) -> dict[str, Any]:
    unknown = [repr(printable(k, 40)) for k in obj if k not in fields]
    if unknown:
        raise BadRequest(f"unknown field {', '.join(unknown[:5])} in {where}; "
                         f"it takes {', '.join(fields)} (GET /v1/openapi.json)")
    return obj


async def _body(request: web.Request, *fields: str) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise TooLarge(f"request body over the {MAX_BODY} byte limit") from exc
    return json_object(raw, *fields)


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = body.get(name, default)
    if value is ...:
        raise BadRequest(f"missing field {name!r}")
    if not isinstance(value, kind):
        raise BadRequest(f"field {name!r} must be {_KINDS.get(kind, kind.__name__)}")
    return value


def _origin(body: dict[str, Any], default: str) -> str:
    """An origin other spores accept (records: a one-line label), refused here
    rather than stored and then refused by every peer."""
    value: str = _field(body, "origin", str, default)
    if len(value) > MAX_ORIGIN or _ORIGIN_CONTROL.search(value):
        raise BadRequest(f"field 'origin' must be one line of at most {MAX_ORIGIN} "
                         "characters, without control characters")
    return value


def _int_field(body: dict[str, Any], name: str, default: int, high: int, low: int = 1) -> int:
    """An integer; 3.0 is 3 (JSON Schema's integer), 3.5 or true is refused."""
    value = body.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"field {name!r} must be an integer in {low}..{high}")
    return value


def _spore(request: web.Request) -> Spore:
    return request.app[SPORE_KEY]


# -- handlers ---------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _status_of(request: web.Request) -> dict[str, Any]:
    """What /v1/status says (and /metrics, from the same snapshot)."""
    return {**await _spore(request).status(), "api": request.app[FAULTS_KEY].status()}


async def status(request: web.Request) -> web.Response:
    return web.json_response(await _status_of(request))


async def dna(request: web.Request) -> web.Response:
    return web.json_response(_spore(request).dna.show())


async def teach(request: web.Request) -> web.Response:
    body = await _body(request, "text", "question", "origin")
    item = TeachItem(_field(body, "text", str), _field(body, "question", str, ""),
                     _origin(body, "taught"))
    [(mid, new)] = await _spore(request).teach([item])
    return web.json_response({"id": mid.hex(), "new": new}, status=201 if new else 200)


async def ingest(request: web.Request) -> web.Response:
    chunks = _field(await _body(request, "chunks"), "chunks", list)
    if not chunks or len(chunks) > MAX_INGEST_CHUNKS:
        raise BadRequest(f"'chunks' must hold 1 to {MAX_INGEST_CHUNKS} items")
    items = []
    for c in chunks:
        if not isinstance(c, dict):
            raise BadRequest("each chunk must be an object {text, question, origin}")
        _only(c, ("text", "question", "origin"), "a chunk")
        # The question is checked as teach's: a string here, its size by Spore.teach.
        items.append(TeachItem(_field(c, "text", str), _field(c, "question", str, ""),
                               _origin(c, "ingested")))
    stored = await _spore(request).teach(items)
    return web.json_response({"ids": [m.hex() for m, _ in stored],
                              "new": sum(1 for _, n in stored if n)})


def _flag(body: dict[str, Any], name: str) -> bool | None:
    """An optional boolean field: None when absent (null is refused)."""
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, bool):
        raise BadRequest(f"field {name!r} must be true or false")
    return value


async def ask(request: web.Request) -> web.StreamResponse:
    """The answer as one JSON, or (stream: true) as NDJSON events
    (p2pnode.generation.Generation.events): the ranking is done and the
    generation's turn taken before the 200, so their refusals are plain
    JSON errors; a client that goes away stops the generation (the handler
    is cancelled, and the events closed)."""
    body = await _body(request, "question", "top", "generate", "stream", "ungrounded")
    question, top = _field(body, "question", str), _int_field(body, "top", 3, MAX_TOP)
    how = {"generate": _flag(body, "generate"), "ungrounded": _flag(body, "ungrounded")}
    spore = _spore(request)
    if not _flag(body, "stream"):
        return web.json_response(await spore.ask(question, top, **how))
    asked = await spore.routed(question, top, **how)
    resp = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/x-ndjson",
                                       hdrs.CACHE_CONTROL: "no-store"})
    async with spore.generation.turn(asked), \
            contextlib.aclosing(spore.generation.events(asked)) as events:
        await resp.prepare(request)
        try:
            async for event in events:
                await resp.write(json.dumps(event, ensure_ascii=False).encode() + b"\n")
            await resp.write_eof()
        except ConnectionError:  # the asker went away: the events close with the block
            pass
    return resp


async def rate(request: web.Request) -> web.Response:
    body = await _body(request, "answer_id", "vote")
    vote = _field(body, "vote", str)
    if vote not in ("up", "down"):
        raise BadRequest("field 'vote' must be 'up' or 'down'")
    answer_id = _field(body, "answer_id", str)
    return web.json_response(await _spore(request).rate(answer_id, vote == "up"))


def _int_param(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name, str(default))
    if not re.fullmatch(r"[0-9]{1,12}", raw) or int(raw) > high:
        raise BadRequest(f"query parameter {name!r} must be an integer in 0..{high}, "
                         f"got {printable(raw, 40)!r}")
    return int(raw)


async def memories(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 20, MAX_LIMIT)
    offset = _int_param(request, "offset", 0, MAX_OFFSET)
    items = await _spore(request).memories(limit, offset)
    return web.json_response({"memories": items, "limit": limit, "offset": offset})


def _memory_id(raw: str) -> bytes:
    if not re.fullmatch(r"[0-9a-f]{64}", raw):
        raise BadRequest(f"{printable(raw, 80)!r} is not a memory id (64 lower-case hex digits)")
    return bytes.fromhex(raw)


async def memory(request: web.Request) -> web.Response:
    return web.json_response(await _spore(request).memory(_memory_id(request.match_info["id"])))


async def forget(request: web.Request) -> web.Response:
    """The author's memory forgotten by every spore; anyone else's hidden here."""
    body = await _body(request, "memory_id")
    mid = _memory_id(_field(body, "memory_id", str))
    return web.json_response(await _spore(request).forgetting.forget(mid))


async def export(request: web.Request) -> web.StreamResponse:
    """JSON lines, streamed as storage is read (p2pnode.exchange)."""
    rated = request.query.get("rated", "false")
    if rated not in ("true", "false"):
        raise BadRequest("query parameter 'rated' must be true or false")
    resp = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/x-ndjson"})
    await resp.prepare(request)
    async for line in export_lines(_spore(request), rated=rated == "true"):
        await resp.write(line.encode())
    await resp.write_eof()
    return resp


async def import_(request: web.Request) -> web.Response:
    """A batch of an export's lines; the CLI streams a file in such batches."""
    lines = _field(await _body(request, "lines"), "lines", list)
    if len(lines) > MAX_IMPORT_LINES or not all(isinstance(x, str) for x in lines):
        raise BadRequest(f"'lines' must be a list of at most {MAX_IMPORT_LINES} strings")
    return web.json_response((await import_lines(_spore(request), lines)).json())


async def peers(request: web.Request) -> web.Response:
    spore = _spore(request)
    contacts = spore.swarm.dht.contacts() if spore.swarm is not None else []
    gossip = spore.peers.status() if spore.peers is not None else {}
    return web.json_response({
        "peers": [{"node_id": c.node_id, "address": f"{c.ip}:{c.port}",
                   "last_seen_s": None if c.last_seen_s is None else round(c.last_seen_s, 1),
                   "alive": c.last_seen_s is not None} for c in contacts],
        "gossip": gossip.get("members", []),
        "refused": gossip.get("refused", {}),
        "dht_refused": spore.swarm.refused() if spore.swarm is not None else {}})


async def dna_update(request: web.Request) -> web.Response:
    changes = _field(await _body(request, "set"), "set", dict)
    if not changes:
        raise BadRequest("field 'set' must name at least one DNA field to change")
    spore = _spore(request)
    try:
        return web.json_response(await spore.update_dna(changes))
    except ConfigError as exc:
        raise BadRequest(str(exc)) from exc
    except StateError as exc:
        if spore.identity.public_key.hex() in spore.dna.fields["founders"]:
            raise  # a founder's write that failed (a full disk, say), not a refusal
        return _error(403, str(exc))


async def invites(request: web.Request) -> web.Response:
    """A one-time invitation code into this invite swarm (founders, and members
    allowed to invite)."""
    body = await _body(request, "may_invite", "ttl_s")
    may_invite = _field(body, "may_invite", bool, False)
    ttl_s = _int_field(body, "ttl_s", DEFAULT_INVITE_TTL_S, MAX_INVITE_TTL_S, MIN_INVITE_TTL_S)
    spore = _spore(request)
    try:
        made = await spore.invite(may_invite=may_invite, ttl_s=ttl_s)
    except ConfigError as exc:
        raise BadRequest(str(exc)) from exc
    return web.json_response(made, status=201)


async def members(request: web.Request) -> web.Response:
    spore = _spore(request)
    return web.json_response({"members": spore.members_list(),
                              "membership": spore.dna.membership})


async def revocations(request: web.Request) -> web.Response:
    """A founder throws a member out: a signed revocation, gossiped."""
    body = await _body(request, "node_id", "why")
    target = _field(body, "node_id", str)
    if not _MEMBER_ID.fullmatch(target):
        raise BadRequest(f"{printable(target, 80)!r} is not a node id or public key "
                         "(1 to 64 lower-case hex digits)")
    why = _field(body, "why", str, "")
    if len(why) > MAX_WHY or _WHY_CONTROL.search(why):
        raise BadRequest(f"field 'why' must be one line of at most {MAX_WHY} characters, "
                         "without control characters")
    spore = _spore(request)
    try:
        done = await spore.revoke(target, why)
    except ConfigError as exc:
        raise BadRequest(str(exc)) from exc
    return web.json_response(done, status=201)


async def votes(request: web.Request) -> web.Response:
    return web.json_response(_spore(request).votes_for(_memory_id(request.match_info["id"])))


async def agents(request: web.Request) -> web.Response:
    """This spore's agents, the swarm's registry (with the lineage tree) and events."""
    net = _spore(request).agents
    if net is None:
        raise BadRequest("this spore runs no agents")
    here = [{"id": a.agent_id.hex(), "generation": a.lineage.generation,
             "parent": a.lineage.parent.hex(), "fitness": round(a.fitness, 4),
             "interactions": a.interactions, "created_ms": a.lineage.created_ms,
             "creator": a.lineage.creator.hex()} for a in net.colony.agents.values()]
    registry = net.registry()
    children: dict[str, list[str]] = {}
    for card in registry:
        if card["parent"]:
            children.setdefault(card["parent"], []).append(card["id"])
    return web.json_response({"here": here, "registry": registry, "children": children,
                              "events": list(net.colony.events), **net.status()})


async def gossip(request: web.Request) -> web.Response:
    service = _spore(request).peers
    if service is None:
        raise BadRequest("this spore runs no gossip")
    return web.json_response(service.status())


async def gossip_block(request: web.Request) -> web.Response:
    """An operator's partition: gossip neither with nor from these peers."""
    service = _spore(request).peers
    if service is None:
        raise BadRequest("this spore runs no gossip")
    listed = _field(await _body(request, "peers"), "peers", list)
    try:
        blocked = parse_peers(listed, "field 'peers'")
    except ConfigError as exc:
        raise BadRequest(str(exc)) from exc
    service.blocked = set(blocked)
    return web.json_response({"blocked": [f"{h}:{p}" for h, p in sorted(service.blocked)]})


async def locate(request: web.Request) -> web.Response:
    mid = _memory_id(request.match_info["id"])
    swarm = _spore(request).swarm
    holders = await swarm.locate(mid) if swarm is not None else []
    return web.json_response({"memory_id": mid.hex(), "holders": [
        {"node_id": n, "address": f"{ip}:{port}"} for n, ip, port in holders]})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def mcp(request: web.Request) -> web.StreamResponse:
    """MCP for AI assistants over streamable HTTP (p2pnode.mcp), past the same gate.
    Its SDK (the optional extra) is imported at the first /mcp request only."""
    try:
        from p2pnode.mcp import serve_http
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "mcp":
            raise
        return _error(501, "this daemon has no MCP server: install it with "
                      "pip install 'sporemind[mcp]', then restart the daemon")
    return await serve_http(request)


SPORE_KEY: web.AppKey[Spore] = web.AppKey("spore", Spore)
GATE_KEY: web.AppKey[Gate] = web.AppKey("gate", Gate)
FAULTS_KEY: web.AppKey[Faults] = web.AppKey("faults", Faults)


def make_app(spore: Spore, token: str, *, loopback_only: bool, host: str = "",
             clock: Callable[[], float] = time.monotonic) -> web.Application:
    """The API of `spore`, bound to `host` (its Host name too); serve it with ApiRunner.

    `token` guards DNA changes, and beyond loopback every route but /healthz."""
    if not token:
        raise ValueError("the API needs a token (api.token in the state directory)")
    app = web.Application(middlewares=[errors_as_json, gate, metrics_mod.time_asks],
                          client_max_size=MAX_BODY)
    app[SPORE_KEY] = spore
    app[metrics_mod.METRICS_KEY] = metrics_mod.Metrics()  # its own registry, per app
    app[GATE_KEY] = Gate(token=token, loopback_only=loopback_only,
                         names=LOOPBACK_NAMES | {host_name(host)} - {"", "0.0.0.0", "::"})
    app[FAULTS_KEY] = Faults(clock)
    app.add_routes([
        web.get("/healthz", healthz),
        web.get("/v1/status", status),
        web.get("/metrics", metrics_mod.handler(_status_of)),
        web.get("/v1/dna", dna),
        web.post("/v1/teach", teach),
        web.post("/v1/ingest", ingest),
        web.post("/v1/ask", ask),
        web.post("/v1/rate", rate),
        web.get("/v1/memories", memories),
        web.get("/v1/memories/{id}", memory),
        web.post("/v1/forget", forget),
        web.get("/v1/export", export),
        web.post("/v1/import", import_),
        web.get("/v1/peers", peers),
        web.get("/v1/dht/locate/{id}", locate),
        web.post("/v1/dna", dna_update),
        web.get("/v1/votes/{id}", votes),
        web.get("/v1/gossip", gossip),
        web.get("/v1/agents", agents),
        web.post("/v1/gossip/block", gossip_block),
        web.post("/v1/invites", invites),
        web.get("/v1/members", members),
        web.post("/v1/revocations", revocations),
        web.get("/v1/openapi.json", openapi),
        web.post("/mcp", mcp),  # stateless: no SSE stream to GET, no session to DELETE
        *dashboard.routes(app),
    ])
    return app


# Routes that change the swarm's rules or who is in it: the token even on loopback.
# An export holds the questions rated here (their text never leaves this device).
TOKEN_ROUTES = frozenset({dna_update, invites, revocations, export})
