"""The OpenAPI 3.1 document of the local API (served at /v1/openapi.json).

It is the contract the API keeps (tests/test_schemathesis.py fuzzes a real
daemon against it): what it calls valid is served, what it calls invalid is
refused with a 4xx, and every answer is JSON.
"""

from __future__ import annotations

from typing import Any

_ERR = {"description": "error: {error: what to fix}", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}
_OK = {"type": "object"}

# What Python's str.strip() removes (the daemon refuses a text that is only
# that), spelled out: a regex's \s differs from it (\x1c-\x1f, \x85, \ufeff).
_SPACE = "".join(f"\\u{c:04x}" for c in range(0x10000) if chr(c).isspace())


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, *, created: bool = False,
        writes: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "ok", **_json(_OK)}}
    if created:
        responses["201"] = {"description": "created (new)", **_json(_OK)}
    responses["4XX"] = _ERR
    if writes:
        responses["507"] = {**_ERR, "description": "the disk is full: nothing was stored"}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    return op


def _asking(op: dict[str, Any]) -> dict[str, Any]:
    """The ask's answers: one JSON, or with stream=true NDJSON events, one a
    line (as Ollama streams): {"event": "sources", ...the JSON's fields but
    "answer" null when in words}, {"event": "token", "text"}..., then
    {"event": "done", "answer_id", "route", "answer", "citations", "provider",
    "model"} or {"event": "error", "answer_id", "error"}."""
    op["responses"]["200"] = {"description": "ok: one JSON, or NDJSON events when stream "
                                             "is true", "content": {
        "application/json": {"schema": _ASKED},
        "application/x-ndjson": {"schema": _STR}}}
    op["responses"]["503"] = {**_ERR, "description": "generations busy: try again "
                                                     "(Retry-After)"}
    return op


def _obj(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props,
            "additionalProperties": False}


def _query(name: str, high: int, default: int) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {
        "type": "integer", "minimum": 0, "maximum": high, "default": default}}


_STR = {"type": "string"}
_TEXT = {"type": "string", "pattern": f"[^{_SPACE}]",
         "description": "UTF-8 with some non-space character, at most max_text_bytes "
                        "(16 KiB by default; more is refused with 413)"}
# An origin is a label other spores show on one line (p2pnode.records):
# at most MAX_ORIGIN characters, no control character.
MAX_ORIGIN = 1024
ORIGIN_CONTROL = "[\\u0000-\\u001f\\u007f-\\u009f]"
_ORIGIN = {"type": "string", "maxLength": MAX_ORIGIN, "not": {"pattern": ORIGIN_CONTROL},
           "description": "where the text came from (a file, a URL): one line"}
# What an ask answers (p2pnode.node.Spore.ask). "I don't know" (abstained)
# when the nearest memory is not near (p2pnode.ranking.abstains): answer
# null, confidence 0, the sources shown as "maybe", the answer id kept so
# the first of them can be rated (an up vote makes it known for the question).
_SOURCE = {"type": "object", "required": ["id", "question", "text", "origin", "author",
                                          "created_ms", "score"], "properties": {
    "id": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "question": _STR, "text": _STR,
    "origin": _STR, "author": _STR, "created_ms": {"type": "integer"},
    "score": {"type": "number", "description": "cosine moved by the votes on this question"},
    "agents": {"type": "number", "description": "the agents' consensus, when they had a say"},
    "rejected": {"type": "boolean", "description": "rated down for this question"},
    "maybe": {"type": "boolean", "description": "present (true) when the ask abstained"},
    "remote": {"type": "boolean", "description": "fetched from the swarm"},
    "author_membership": {"type": "object"}, "revoked_author": {"type": "boolean"}}}
_NULLABLE_STR = {"type": ["string", "null"]}
# Answers in words (p2pnode.generation, p2pnode.answering): "route" says
# where the answer came from; in words, "generated" holds the text with its
# numbered citations ([n] → the n-th source's memory id) and who wrote it.
_CITATIONS = {"type": "array", "items": {"type": "object", "required": ["n", "id"], "properties": {
    "n": {"type": "integer", "minimum": 1}, "id": {"type": "string"},
    "by": {"type": "string", "enum": ["marker", "words"], "description":
           "marker: the text wrote [n]; words: no marker, the text took the source's words"}}}}
_ROUTE = {"type": "string", "enum": ["memory", "generated", "unknown"], "description":
          "memory: a held memory answers (confident enough, or rated up for this question); "
          "generated: in words, from the sources; unknown: \"I don't know\""}
_GENERATED = {"type": "object", "required": ["text", "citations", "provider", "model"],
              "properties": {"text": _STR, "citations": _CITATIONS, "provider": _STR,
                             "model": _STR, "grounded": {"type": "boolean", "description":
                                                         "false: no source was near; "
                                                         "answered without memories"},
                             "ignored_citations": {"type": "integer", "description":
                                                   "markers naming no source given"},
                             "cut": {"type": "boolean"}}}
_ASKED = {"type": "object", "required": [
    "answer_id", "answer", "abstained", "confidence", "sources", "agents_weight",
    "memories_searched", "route"], "properties": {
    "route": _ROUTE, "generated": _GENERATED,
    "generation_error": {"type": "string", "description": "why no answer in words (the "
                                                          "answer is the ranking's own)"},
    "answer_id": {**_NULLABLE_STR, "description": "rate it with POST /v1/rate (null: no "
                                                  "memory at all)"},
    "answer": {**_NULLABLE_STR, "description": "the first source's text, or the answer in "
                                               "words; null when abstained or nothing is "
                                               "held"},
    "abstained": {"type": "boolean", "description": "true: \"I don't know\", the sources "
                                                    "are only the nearest memories (maybe)"},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1, "description":
                   "P(the answer is right), calibrated by the ratings; 0 when abstained"},
    "sources": {"type": "array", "items": _SOURCE},
    "agents_weight": {"type": "number"}, "memories_searched": {"type": "integer"}}}
# Membership: an invitation lives 1 minute to 30 days (a day by default); a
# revocation names a member by (a prefix of) its node id or public key and
# says why in one line, as p2pnode.membership signs it.
MIN_INVITE_TTL_S, DEFAULT_INVITE_TTL_S, MAX_INVITE_TTL_S = 60, 86_400, 30 * 86_400
MAX_WHY = 200
WHY_CONTROL = "[\\u0000-\\u001f\\u007f-\\u009f\\u200b-\\u200f\\u2028-\\u202e\\u2066-\\u2069]"
MEMBER_ID = "^[0-9a-f]{1,64}$"
_ID = {"name": "id", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
_RULES = """JSON in, JSON out (but GET /metrics: Prometheus text; GET / and /dashboard/…:
the dashboard's page, a client of this API, left out of this document). Bodies must be sent as
`Content-Type: application/json` (else 415) and hold only the documented fields
(else 400). Requests from web pages of other sites are refused with 403: a Host
header other than this API's own names (localhost, 127.0.0.1, [::1], the bound
address), a cross-site `Origin` or `Sec-Fetch-Site: cross-site`. The token (`Authorization: Bearer`,
from `api.token` in the daemon's state directory) is needed for POST /v1/dna,
POST /v1/invites and POST /v1/revocations (they change the swarm's rules or
who is in it), GET /v1/export (it holds the questions rated here), and for
every route but /healthz and the dashboard's files when the API is bound beyond
loopback (else 401)."""

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Sporemind local API", "version": "1", "description": _RULES},
    "paths": {
        "/healthz": {"get": _op("liveness")},
        "/v1/status": {"get": _op("node status and counters")},
        "/metrics": {"get": {"summary": "Prometheus metrics (the counters of /v1/status, ask "
                                        "latency, the process): text format 0.0.4, or "
                                        "OpenMetrics when the Accept header asks for it",
                             "responses": {"200": {"description": "ok", "content": {
                                 "text/plain": {"schema": _STR},
                                 "application/openmetrics-text": {"schema": _STR}}},
                                 "4XX": _ERR}}},
        "/v1/dna": {"get": _op("the swarm DNA this spore runs"),
                    "post": {**_op("publish a new DNA version (founders only)", _obj(
                        ["set"], set={"type": "object", "description":
                                      "division_threshold, mutation_sigma, "
                                      "fitness_half_life_days, founders"}), writes=True),
                             "security": [{"token": []}]}},
        "/v1/teach": {"post": _op("teach one memory (201 when new, 200 when known)", _obj(
            ["text"], text=_TEXT, question=_STR, origin=_ORIGIN), created=True, writes=True)},
        "/v1/ingest": {"post": _op("store a batch of document chunks", _obj(
            ["chunks"], chunks={"type": "array", "minItems": 1, "maxItems": 256,
                                "items": _obj(["text"], text=_TEXT, question=_STR,
                                              origin=_ORIGIN)}),
            writes=True)},
        "/v1/ask": {"post": _asking(_op(
            "answer a question: from memory when a memory is confident enough or was rated "
            "up for it, else in words from the sources (when a generator is configured), "
            "else \"I don't know\" (503: generations busy, try again)", _obj(
                ["question"], question=_TEXT, top={"type": "integer", "minimum": 1,
                                                   "maximum": 20, "default": 3},
                generate={"type": "boolean", "description": "may answer in words (default: "
                          "true when a generator is configured)"},
                stream={"type": "boolean", "default": False, "description": "NDJSON events "
                        "instead of one JSON"},
                ungrounded={"type": "boolean", "description": "may answer in words when "
                            "nothing held is near (marked grounded: false; default: [generate] "
                            "ungrounded)"})))},
        "/v1/rate": {"post": _op("rate an answer (404: no such answer id)", _obj(
            ["answer_id", "vote"], answer_id=_STR,
            vote={"type": "string", "enum": ["up", "down"]}), writes=True)},
        "/v1/memories": {"get": _op("list memories, newest first", params=[
            _query("limit", 1000, 20), _query("offset", 10**9, 0)])},
        "/v1/memories/{id}": {"get": _op("one memory with its votes", params=[_ID])},
        "/v1/forget": {"post": _op(
            "forget a memory: this spore's own, everywhere (a signed tombstone, gossiped); "
            "anyone else's, hidden here only (404: unknown here and in the swarm)", _obj(
                ["memory_id"], memory_id={"type": "string", "pattern": "^[0-9a-f]{64}$"}),
            writes=True)},
        "/v1/export": {"get": {**_op("every memory, tombstone and vote as JSON lines (with "
                                     "rated=true: the questions rated here with their "
                                     "answers, as training data)", params=[{
                                         "name": "rated", "in": "query", "schema": {
                                             "type": "string", "enum": ["true", "false"],
                                             "default": "false"}}]),
                               "responses": {"200": {"description": "one JSON object a line",
                                                     "content": {"application/x-ndjson": {
                                                         "schema": _STR}}}, "4XX": _ERR},
                               "security": [{"token": []}]}},
        "/v1/import": {"post": _op(
            "import a batch of an export's lines: each signed record verified, memories "
            "deduplicated by content, tombstoned ones refused; counts and refusals by reason",
            _obj(["lines"], lines={"type": "array", "maxItems": 1024, "items": _STR}),
            writes=True)},
        "/v1/peers": {"get": _op("DHT contacts, gossip members and refused peers")},
        "/v1/votes/{id}": {"get": _op("a memory's votes as gossip converged them",
                                      params=[_ID])},
        "/v1/gossip": {"get": _op("gossip state: items, digest root, members, counters")},
        "/v1/agents": {"get": _op("this spore's agents, the swarm's agent registry with the "
                                  "lineage tree, recent births, divisions and deaths")},
        "/v1/gossip/block": {"post": _op("stop gossiping with these peers (a partition)", _obj(
            ["peers"], peers={"type": "array", "items": {
                "type": "string", "description": "HOST:PORT"}}))},
        "/v1/dht/locate/{id}": {"get": _op("which spores hold a memory", params=[_ID])},
        "/v1/invites": {"post": {**_op(
            "a one-time invitation code into this invite swarm (201; 403 when this "
            "spore may not invite, 409 in an open swarm)", _obj(
                [], may_invite={"type": "boolean", "default": False, "description":
                                "whether the joiner may invite others in turn"},
                ttl_s={"type": "integer", "minimum": MIN_INVITE_TTL_S,
                       "maximum": MAX_INVITE_TTL_S, "default": DEFAULT_INVITE_TTL_S,
                       "description": "seconds until the code expires"}),
            created=True, writes=True), "security": [{"token": []}]}},
        "/v1/members": {"get": _op("the swarm's members as this spore knows them (founders, "
                                   "invited, ticket holders, revoked) and its membership mode")},
        "/v1/revocations": {"post": {**_op(
            "revoke a member (founders only; 201, 403 for others)", _obj(
                ["node_id"], node_id={"type": "string", "pattern": MEMBER_ID, "description":
                                      "node id or public key (hex), or a prefix naming "
                                      "one known member"},
                why={"type": "string", "maxLength": MAX_WHY, "not": {"pattern": WHY_CONTROL},
                     "description": "why, in one line"}),
            created=True, writes=True), "security": [{"token": []}]}},
        "/v1/openapi.json": {"get": _op("this document")},
    },
    "components": {
        "schemas": {"Error": _obj(["error"], error=_STR)},
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer", "description":
                                      "the token in api.token in the state directory"}},
    },
}
