"""What the `spore` commands print for people: aligned label/value lines.

Pure functions from the API's JSON to text. Nothing here prints a Python
repr: a part of the answer that has no line of its own yet (a counter a new
version adds) is still spelled out in words by `flat`. `--json` prints the
answer itself, complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["dna_lines", "fields", "flat", "generate_rows", "listen_line", "memory_lines",
           "questions_go", "status_lines", "when"]

Row = tuple[str, str]


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def flat(value: Any) -> str:
    """A JSON value in words: `asks 3, teaches 2`, nested parts in parentheses."""
    if isinstance(value, Mapping):
        parts = [f"{_words(k)} ({flat(v)})" if isinstance(v, Mapping) and v
                 else f"{_words(k)} {flat(v)}" for k, v in value.items()]
        return ", ".join(parts) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(flat(v) for v in value) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def _words(key: Any) -> str:
    return str(key).replace("_", " ")


def _part(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _nonzero(counts: Any) -> str:
    """Counters that moved, in words ("none yet" when none did)."""
    if not isinstance(counts, Mapping):
        return flat(counts)
    moved = {k: v for k, v in counts.items() if v}
    return flat(moved) if moved else "none yet"


def fields(rows: Iterable[Row]) -> str:
    """Label/value lines, values aligned; a value's later lines stay in its column."""
    rows = list(rows)
    width = max((len(label) for label, _ in rows), default=0)
    out = []
    for label, value in rows:
        first, *more = str(value).split("\n") or [""]
        out.append(f"{label:{width}}  {first}".rstrip())
        out.extend(f"{'':{width}}  {line}".rstrip() for line in more)
    return "\n".join(out)


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return flat(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # unreachable; for the type checker


def _duration(s: Any) -> str:
    if not isinstance(s, int | float):
        return flat(s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86_400:.1f} days"


# -- spore status -------------------------------------------------------------------------
_SHOWN = {"node_id", "public_key", "swarm", "dna_hash", "swarm_id", "dna_version", "encoder",
          "memories", "indexed", "votes", "uptime_s", "counters", "rss_mb", "dht", "gossip",
          "members", "agents", "api", "generate"}


def status_lines(data: Mapping[str, Any]) -> str:
    rows: list[Row] = [
        ("node", str(data.get("node_id", "-"))),
        ("public key", str(data.get("public_key", "-"))),
        ("swarm", f"{data.get('swarm')} (id {str(data.get('swarm_id'))[:16]}…, "
                  f"dna v{data.get('dna_version')} {str(data.get('dna_hash'))[:16]}…)"),
    ]
    if isinstance(data.get("members"), Mapping):
        rows.append(("membership", membership_text(data["members"])))
    rows += [
        ("encoder", str(data.get("encoder", "-"))),
        ("memories", f"{data.get('memories')} held, {data.get('indexed')} indexed, "
                     f"{data.get('votes')} vote entries"),
        ("counters", _nonzero(data.get("counters"))),
        ("running", f"for {_duration(data.get('uptime_s'))}, "
                    f"{flat(data.get('rss_mb'))} MB resident"),
    ]
    if isinstance(data.get("dht"), Mapping):
        rows += _dht_rows(data["dht"])
    if isinstance(data.get("gossip"), Mapping):
        rows += _gossip_rows(data["gossip"])
    if isinstance(data.get("agents"), Mapping):
        rows += _agents_rows(data["agents"])
    if isinstance(data.get("generate"), Mapping):
        rows += generate_rows(data["generate"])
    if isinstance(data.get("api"), Mapping):
        api = data["api"]
        rows.append(("local api", f"{api.get('malformed_requests', 0)} malformed requests; "
                                  f"refused: {_nonzero(api.get('refused'))}"))
    rows += [(_words(k), flat(v)) for k, v in data.items() if k not in _SHOWN]
    return fields(rows)


def membership_text(m: Mapping[str, Any]) -> str:
    standing = m.get("standing", "member")
    who = (f"a {m.get('kind')}" if standing == "member"
           else f"NOT A MEMBER ({standing}): other spores refuse this one")
    invites = ", may invite" if m.get("may_invite") else ""
    return (f"{m.get('membership')} swarm; this spore is {who}{invites}; "
            f"{m.get('members', 0)} members known")


def listen_line(address: str, listen: Any) -> str:
    """Where the DHT and peer port listen, and why (p2pnode.config.dht_listen)."""
    if not isinstance(listen, Mapping):
        return f"{address} (udp: DHT, tcp: peer HTTP)"
    scope = "this device only" if listen.get("loopback_only") else "open to the network"
    return f"{address} udp+tcp, {scope}: {listen.get('why', '')}"


def _dht_rows(dht: Mapping[str, Any]) -> list[Row]:
    store = _part(dht, "store")
    rows: list[Row] = [
        ("listening", listen_line(str(dht.get("dht_address")), dht.get("listen"))),
        ("dht", f"{dht.get('contacts')} contacts, holding {store.get('count', 0)} values "
                f"({_size(store.get('bytes', 0))}) for the swarm"),
    ]
    if dht.get("alone"):
        rows.append(("", alone_text(dht.get("bootstrap") or {})))
    rows.append(("dht counters", _nonzero(dht.get("counters"))))
    return rows


def alone_text(boot: Mapping[str, Any]) -> str:
    peers = ", ".join(boot.get("peers") or []) or "gossip peers"
    return (f"ALONE: no DHT contact although peers are configured ({peers}); "
            f"{boot.get('attempts_since_joined', 0)} bootstrap attempts, "
            f"next in {boot.get('next_retry_s')} s")


def _gossip_rows(g: Mapping[str, Any]) -> list[Row]:
    members = g.get("members")
    states: dict[str, int] = {}
    for m in members if isinstance(members, list) else []:
        state = str(m.get("state")) if isinstance(m, Mapping) else "?"
        states[state] = states.get(state, 0) + 1
    peers = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
    refused = _part(g, "refused")
    blocked = ", ".join(map(str, g.get("blocked") or [])) or "none"
    return [("gossip", f"{g.get('items')} items, peers: {peers}; {len(refused)} refused; "
                       f"blocked: {blocked}"),
            ("gossip counters", _nonzero(g.get("counters")))]


def _agents_rows(a: Mapping[str, Any]) -> list[Row]:
    rest = {k: v for k, v in a.items() if k not in ("agents", "spare", "counters")}
    return [("agents", f"{a.get('agents')} here, {a.get('spare')} spare; "
                       f"{_nonzero(a.get('counters'))}"),
            ("agents' record", flat(rest))]


# -- answers in words (p2pnode.generation) ---------------------------------------------------
THIS_DEVICE = "this device"  # p2pnode.providers.THIS_DEVICE


def questions_go(where: Any) -> str:
    """Where a question's text goes, in words: this device only, or the endpoints."""
    places = [str(w) for w in where] if isinstance(where, list) else []
    away = [w for w in places if w != THIS_DEVICE]
    if not away:
        return "this device only"
    here = ", then this device" if THIS_DEVICE in places else ""
    return (f"{', '.join(away)}{here} (an answer in words sends the question's text there; "
            "the swarm never gets it)")


def generate_rows(g: Mapping[str, Any]) -> list[Row]:
    """How asks are answered, where questions go, and each provider's state."""
    if not g.get("on"):
        return [("answers", "from memory only (no language model: [generate] in config.toml, "
                            "SPORE_GENERATE)"),
                ("questions go", "this device only")]
    counters = _nonzero(g.get("counters"))
    rows: list[Row] = [
        ("answers", f"from memory at confidence ≥ {_num(g.get('threshold')):.2f} or when rated "
                    f"up, else in words{', ungrounded allowed' if g.get('ungrounded') else ''}; "
                    f"{counters}"),
        ("questions go", questions_go(g.get("questions_go")))]
    for p in g.get("providers") or []:
        if not isinstance(p, Mapping):
            continue
        state = str(p.get("state", "?"))
        if state == "cooling":
            state += f" for {_num(p.get('cooling_s')):.0f} s"
        error = f"; last error: {p['last_error']}" if p.get("last_error") else ""
        rows.append((f"provider {p.get('name')}",
                     f"{state}: {p.get('kind')} {p.get('model')} at {p.get('where')}; "
                     f"{p.get('calls', 0)} calls, {p.get('failures', 0)} failed{error}"))
    return rows


# -- dna show, memories ID -------------------------------------------------------------------
_DNA_SHOWN = {"swarm", "swarm_id", "version", "hash", "signer", "created_ms", "protocol",
              "membership", "puzzle_bits", "encoder", "lsh", "replication",
              "division_threshold", "mutation_sigma", "fitness_half_life_days", "founders"}


def dna_lines(d: Mapping[str, Any]) -> str:
    enc, lsh = _part(d, "encoder"), _part(d, "lsh")
    membership = str(d.get("membership", "-"))
    if membership == "open":
        membership += f" (identity puzzle: {d.get('puzzle_bits', 0)} bits)"
    founders: Sequence[Any] = d.get("founders") or []
    rows: list[Row] = [
        ("swarm", str(d.get("swarm", "-"))),
        ("swarm id", str(d.get("swarm_id", "-"))),
        ("version", f"{d.get('version')}, hash {d.get('hash')}"),
        ("signed by", str(d.get("signer", "-"))),
        ("created", when(d["created_ms"]) if isinstance(d.get("created_ms"), int) else "-"),
        ("protocol", flat(d.get("protocol"))),
        ("membership", membership),
        ("encoder", f"{enc.get('name')}, {enc.get('dim')} dimensions, "
                    f"sha256 {enc.get('sha256')}"),
        ("lsh", f"{lsh.get('tables')} tables of {lsh.get('bits')} bits, "
                f"{lsh.get('probes')} probes, seed {lsh.get('seed')}"),
        ("replication", f"{d.get('replication')} replicas"),
        ("division threshold", f"{d.get('division_threshold')} interactions"),
        ("mutation sigma", flat(d.get("mutation_sigma"))),
        ("fitness half-life", f"{flat(d.get('fitness_half_life_days'))} days"),
        ("founders", "\n".join(map(str, founders)) or "none"),
    ]
    rows += [(_words(k), flat(v)) for k, v in d.items() if k not in _DNA_SHOWN]
    return fields(rows)


_MEMORY_SHOWN = {"id", "question", "text", "origin", "author", "created_ms", "up", "down",
                 "fitness"}


def memory_lines(m: Mapping[str, Any]) -> str:
    rows: list[Row] = [("id", str(m.get("id")))]
    if m.get("question"):
        rows.append(("question", str(m["question"])))
    rows += [
        ("text", str(m.get("text", ""))),
        ("origin", str(m.get("origin", "-"))),
        ("author", str(m.get("author", "-"))),
        ("created", when(m["created_ms"]) if isinstance(m.get("created_ms"), int) else "-"),
    ]
    if "up" in m:
        rows.append(("votes", f"+{m.get('up')} -{m.get('down')} "
                              f"(fitness {_num(m.get('fitness')):+.2f})"))
    rows += [(_words(k), flat(v)) for k, v in m.items() if k not in _MEMORY_SHOWN]
    return fields(rows)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) else 0.0
