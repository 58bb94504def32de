"""The OpenAPI 3.1 document of the local API (served at /v1/openapi.json)."""

from __future__ import annotations

from typing import Any

_ERR = {"description": "error", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "ok", **_json({"type": "object"})},
                      "4XX": _ERR},
    }
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    return op


def _obj(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props,
            "additionalProperties": False}


_STR = {"type": "string"}
_TEXT = {"type": "string", "minLength": 1, "description": "UTF-8, at most max_text_bytes"}
_INT_Q = {"in": "query", "schema": {"type": "integer", "minimum": 0}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Sporemind local API", "version": "1"},
    "paths": {
        "/healthz": {"get": _op("liveness")},
        "/v1/status": {"get": _op("node status and counters")},
        "/v1/dna": {"get": _op("the swarm DNA this spore runs"),
                    "post": _op("publish a new DNA version (founders only)", _obj(
                        ["set"], set={"type": "object", "description":
                                      "division_threshold, mutation_sigma, "
                                      "fitness_half_life_days, founders"}))},
        "/v1/teach": {"post": _op("teach one memory", _obj(
            ["text"], text=_TEXT, question=_STR, origin=_STR))},
        "/v1/ingest": {"post": _op("store a batch of document chunks", _obj(
            ["chunks"], chunks={"type": "array", "minItems": 1, "maxItems": 256,
                                "items": _obj(["text"], text=_TEXT, origin=_STR)}))},
        "/v1/ask": {"post": _op("answer a question from memory", _obj(
            ["question"], question=_TEXT, top={"type": "integer", "minimum": 1,
                                               "maximum": 20}))},
        "/v1/rate": {"post": _op("rate an answer", _obj(
            ["answer_id", "vote"], answer_id=_STR, vote={"enum": ["up", "down"]}))},
        "/v1/memories": {"get": _op("list memories, newest first", params=[
            {"name": "limit", **_INT_Q}, {"name": "offset", **_INT_Q}])},
        "/v1/memories/{id}": {"get": _op("one memory with its votes", params=[
            {"name": "id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}])},
        "/v1/peers": {"get": _op("DHT contacts, gossip members and refused peers")},
        "/v1/votes/{id}": {"get": _op("a memory's votes as gossip converged them", params=[
            {"name": "id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}])},
        "/v1/gossip": {"get": _op("gossip state: items, digest root, members, counters")},
        "/v1/agents": {"get": _op("this spore's agents, the swarm's agent registry with the "
                                  "lineage tree, recent births, divisions and deaths")},
        "/v1/gossip/block": {"post": _op("stop gossiping with these peers (a partition)", _obj(
            ["peers"], peers={"type": "array", "items": _STR}))},
        "/v1/dht/locate/{id}": {"get": _op("which spores hold a memory", params=[
            {"name": "id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}])},
        "/v1/openapi.json": {"get": _op("this document")},
    },
    "components": {"schemas": {"Error": _obj(["error"], error=_STR)}},
}
