"""The local HTTP API (aiohttp): versioned JSON endpoints, the CLI's server.

Errors are JSON ``{"error": "...what to fix..."}``: our callers' mistakes
are 4xx, never a 500 with a traceback (those go to the log).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from p2pnode.config import parse_peers
from p2pnode.errors import BadRequest, ConfigError, SporeError, StateError, TooLarge
from p2pnode.node import Spore, TeachItem
from p2pnode.openapi import OPENAPI

log = logging.getLogger("spore.api")

MAX_BODY = 4 * 1024 * 1024
MAX_INGEST_CHUNKS = 256
SPORE_KEY: web.AppKey[Spore] = web.AppKey("spore", Spore)
TOKEN_KEY: web.AppKey[str | None] = web.AppKey("token", str)  # type: ignore[arg-type]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body over the {MAX_BODY} byte limit")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, f"{exc.reason}: {request.method} {request.path} "
                          "(see GET /v1/openapi.json for the endpoints)")
        raise
    except SporeError as exc:
        log.error("%s %s: %s", request.method, request.path, exc)
        return _error(500, str(exc))
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _error(500, "internal error; the daemon's log has the details")


@web.middleware
async def token_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Beyond loopback, every write needs the token from the state directory."""
    token = request.app[TOKEN_KEY]
    if token and request.method not in ("GET", "HEAD", "OPTIONS"):
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _error(401, "missing or wrong API token: send 'Authorization: Bearer "
                          "<token>' with the token from api.token in the state directory")
    return await handler(request)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise TooLarge(f"request body over the {MAX_BODY} byte limit") from exc
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = body.get(name, default)
    if value is ...:
        raise BadRequest(f"missing field {name!r}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"field {name!r} must be a {kind.__name__}")
    return value


def _spore(request: web.Request) -> Spore:
    return request.app[SPORE_KEY]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def status(request: web.Request) -> web.Response:
    return web.json_response(await _spore(request).status())


async def dna(request: web.Request) -> web.Response:
    return web.json_response(_spore(request).dna.show())


async def teach(request: web.Request) -> web.Response:
    body = await _body(request)
    item = TeachItem(_field(body, "text", str), _field(body, "question", str, ""),
                     _field(body, "origin", str, "taught"))
    [(mid, new)] = await _spore(request).teach([item])
    return web.json_response({"id": mid.hex(), "new": new}, status=201 if new else 200)


async def ingest(request: web.Request) -> web.Response:
    body = await _body(request)
    chunks = _field(body, "chunks", list)
    if not chunks or len(chunks) > MAX_INGEST_CHUNKS:
        raise BadRequest(f"'chunks' must hold 1 to {MAX_INGEST_CHUNKS} items")
    items = []
    for c in chunks:
        if not isinstance(c, dict):
            raise BadRequest("each chunk must be an object {text, origin}")
        items.append(TeachItem(_field(c, "text", str), "", _field(c, "origin", str, "ingested")))
    stored = await _spore(request).teach(items)
    return web.json_response({"ids": [m.hex() for m, _ in stored],
                              "new": sum(1 for _, n in stored if n)})


async def ask(request: web.Request) -> web.Response:
    body = await _body(request)
    result = await _spore(request).ask(_field(body, "question", str), _field(body, "top", int, 3))
    return web.json_response(result)


async def rate(request: web.Request) -> web.Response:
    body = await _body(request)
    vote = _field(body, "vote", str)
    if vote not in ("up", "down"):
        raise BadRequest("field 'vote' must be 'up' or 'down'")
    answer_id = _field(body, "answer_id", str)
    return web.json_response(await _spore(request).rate(answer_id, vote == "up"))


def _int_param(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, got {raw!r}") from None
    if not 0 <= value <= high:
        raise BadRequest(f"query parameter {name!r} must be in 0..{high}")
    return value


async def memories(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 20, 1000)
    offset = _int_param(request, "offset", 0, 10**9)
    items = await _spore(request).memories(limit, offset)
    return web.json_response({"memories": items, "limit": limit, "offset": offset})


def _memory_id(raw: str) -> bytes:
    try:
        mid = bytes.fromhex(raw)
    except ValueError:
        mid = b""
    if len(mid) != 32:
        raise BadRequest(f"{raw!r} is not a memory id (64 hex digits)")
    return mid


async def memory(request: web.Request) -> web.Response:
    return web.json_response(await _spore(request).memory(_memory_id(request.match_info["id"])))


async def peers(request: web.Request) -> web.Response:
    spore = _spore(request)
    contacts = spore.swarm.dht.contacts() if spore.swarm is not None else []
    gossip = spore.peers.status() if spore.peers is not None else {}
    return web.json_response({
        "peers": [{"node_id": c.node_id, "address": f"{c.ip}:{c.port}",
                   "last_seen_s": None if c.last_seen_s is None else round(c.last_seen_s, 1),
                   "alive": c.last_seen_s is not None} for c in contacts],
        "gossip": gossip.get("members", []),
        "refused": gossip.get("refused", {})})


async def dna_update(request: web.Request) -> web.Response:
    body = await _body(request)
    changes = _field(body, "set", dict)
    if not changes:
        raise BadRequest("field 'set' must name at least one DNA field to change")
    try:
        return web.json_response(await _spore(request).update_dna(changes))
    except ConfigError as exc:
        raise BadRequest(str(exc)) from exc
    except StateError as exc:  # not a founder
        return _error(403, str(exc))


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
    listed = _field(await _body(request), "peers", list)
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


def make_app(spore: Spore, token: str | None) -> web.Application:
    # The token guard only exists beyond loopback (a middleware is a cost on every ask).
    middlewares = [errors_as_json, token_guard] if token else [errors_as_json]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[SPORE_KEY] = spore
    app[TOKEN_KEY] = token
    app.add_routes([
        web.get("/healthz", healthz),
        web.get("/v1/status", status),
        web.get("/v1/dna", dna),
        web.post("/v1/teach", teach),
        web.post("/v1/ingest", ingest),
        web.post("/v1/ask", ask),
        web.post("/v1/rate", rate),
        web.get("/v1/memories", memories),
        web.get("/v1/memories/{id}", memory),
        web.get("/v1/peers", peers),
        web.get("/v1/dht/locate/{id}", locate),
        web.post("/v1/dna", dna_update),
        web.get("/v1/votes/{id}", votes),
        web.get("/v1/gossip", gossip),
        web.get("/v1/agents", agents),
        web.post("/v1/gossip/block", gossip_block),
        web.get("/v1/openapi.json", openapi),
    ])
    return app
