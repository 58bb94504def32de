"""The metric families of one /v1/status snapshot (pure): what
p2pnode.metrics' StatusCollector yields at scrape time. Apart from
p2pnode.metrics so that prometheus-client is imported at the first scrape
only, not by every spore that is never scraped (~1.8 MB of an idle spore's
RSS, scripts/bench/footprint.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

__all__ = ["MAX_LABELS", "PREFIX", "families"]

PREFIX = "sporemind"
MAX_LABELS = 64  # label values per family; the smallest beyond are summed as "other"
MAX_LABEL_CHARS = 64
_NOT_LABEL = re.compile(r"[^a-z0-9_]+")

Status = Mapping[str, Any]


def families(status: Status) -> Iterator[Metric]:
    """Every family one /v1/status snapshot yields (nothing for a part it lacks)."""
    if not status:
        return
    yield from _node(status)
    yield _refusals(status)
    if isinstance(status.get("gossip"), Mapping):
        yield from _gossip(status["gossip"])
    if isinstance(status.get("dht"), Mapping):
        yield from _dht(status["dht"])
    if isinstance(status.get("agents"), Mapping):
        yield from _agents(status["agents"])


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _counts(part: Any) -> dict[str, float]:
    """A part's counters dict, numbers only."""
    raw = part.get("counters") if isinstance(part, Mapping) else None
    return {str(k): _num(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


def _label(text: str) -> str:
    return _NOT_LABEL.sub("_", text.lower()).strip("_")[:MAX_LABEL_CHARS] or "unknown"


def _capped(values: Mapping[str, float]) -> list[tuple[str, float]]:
    """(label, value) pairs: at most MAX_LABELS, the smallest beyond summed as "other"."""
    merged: dict[str, float] = {}
    for key, value in values.items():
        merged[_label(key)] = merged.get(_label(key), 0.0) + value
    ranked = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= MAX_LABELS:
        return sorted(ranked)
    kept, rest = ranked[:MAX_LABELS - 1], ranked[MAX_LABELS - 1:]
    return sorted([*kept, ("other", sum(v for _, v in rest))])


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _labelled(name: str, doc: str, label: str, values: Mapping[str, float]
              ) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for key, value in _capped(values):
        family.add_metric([key], value)
    return family


def _with_prefix(counts: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in counts.items() if k.startswith(prefix)}


def _version() -> str:
    try:
        return metadata.version("sporemind")
    except metadata.PackageNotFoundError:
        return "unknown"


def _node(status: Status) -> Iterator[Metric]:
    yield InfoMetricFamily(PREFIX, "This spore: its node, swarm, DNA version and encoder",
                           value={"node_id": str(status.get("node_id", ""))[:64],
                                  "swarm": str(status.get("swarm", ""))[:128],
                                  "dna_version": str(status.get("dna_version", "")),
                                  "encoder": str(status.get("encoder", ""))[:128],
                                  "version": _version()})
    yield _gauge("memories", "Memories held in this spore's store", _num(status.get("memories")))
    yield _gauge("memories_indexed", "Memories in the local search index",
                 _num(status.get("indexed")))
    yield _gauge("vote_entries", "Vote entries known (this spore's and gossiped)",
                 _num(status.get("votes")))
    yield _gauge("uptime_seconds", "Seconds since this spore started",
                 _num(status.get("uptime_s")))
    counts = _counts(status)
    yield _counter("asks_total", "Questions answered", counts.get("asks", 0.0))
    yield _counter("teaches_total", "Memories newly taught or ingested on this spore",
                   counts.get("teaches", 0.0))
    ratings = CounterMetricFamily(f"{PREFIX}_ratings_total",
                                  "Ratings (votes): cast on this spore, or by others and "
                                  "received by gossip", labels=["source"])
    ratings.add_metric(["here"], counts.get("votes", 0.0))
    ratings.add_metric(["gossip"], counts.get("gossip_votes", 0.0))
    yield ratings
    yield _counter("learner_trainings_total", "Times the ranking learner trained on ratings",
                   counts.get("learnt", 0.0))
    members = status.get("members")
    if isinstance(members, Mapping):
        yield _gauge("members", "Members of the swarm this spore knows",
                     _num(members.get("members")))
    api = status.get("api")
    if isinstance(api, Mapping):
        yield _counter("api_malformed_requests_total",
                       "Requests to the local API that could not be parsed",
                       _num(api.get("malformed_requests")))


def _refusals(status: Status) -> CounterMetricFamily:
    """Everything refused, by layer and reason: requests to the local API, peers'
    gossip requests and items, DHT handshakes and stores, agents' messages."""
    layers: dict[str, dict[str, float]] = {}
    api = status.get("api")
    if isinstance(api, Mapping) and isinstance(api.get("refused"), Mapping):
        layers["api"] = {str(k): _num(v) for k, v in api["refused"].items()}
    gossip = {k: v for k, v in _with_prefix(_counts(status.get("gossip")), "refused_").items()
              if not k.startswith("by_peer_")}
    layers["gossip"] = gossip
    dht = _counts(status.get("dht"))
    layers["dht"] = _with_prefix(dht, "refused_")
    layers["dht_store"] = _with_prefix(dht, "rejected_")
    layers["dht_fetch"] = {"invalid_record": dht.get("remote_rejected", 0.0)}
    agents = _counts(status.get("agents"))
    layers["agents"] = {k.replace("_refused_", "_"): v for k, v in agents.items()
                        if "_refused_" in k}
    layers["genome"] = _with_prefix(agents, "genome_rejected_")
    node = _counts(status)
    layers["dna"] = {"refused": node.get("dna_refused", 0.0)}
    family = CounterMetricFamily(f"{PREFIX}_refusals_total",
                                 "Requests, records and peers refused, by layer and reason",
                                 labels=["layer", "reason"])
    for layer, reasons in layers.items():
        for reason, value in _capped(reasons):
            family.add_metric([layer, reason], value)
    return family


_ROUNDS = {"synced": "sync_rounds", "same": "same_rounds", "failed": "failed_rounds",
           "idle": "idle_rounds"}


def _gossip(gossip: Status) -> Iterator[Metric]:
    counts = _counts(gossip)
    rounds = CounterMetricFamily(
        f"{PREFIX}_gossip_rounds_total", "Gossip rounds this spore started, by outcome "
        "(synced: items moved; same: nothing to move; idle: nobody to gossip with)",
        labels=["outcome"])
    by_peers = _with_prefix(counts, "refused_by_peer_")
    for outcome, key in _ROUNDS.items():
        rounds.add_metric([outcome], counts.get(key, 0.0))
    rounds.add_metric(["refused"], sum(by_peers.values()))
    yield rounds
    yield _labelled("gossip_refused_by_peers_total", "Gossip rounds a peer refused, by its "
                    "reason", "reason", by_peers)
    yield _labelled("gossip_items_exchanged_total", "Gossip items sent to and taken from "
                    "peers", "direction", {d: counts.get(f"items_{d}", 0.0)
                                           for d in ("pushed", "pulled")})
    yield _labelled("gossip_bytes_total", "Bytes of peer HTTP (gossip, agents) sent and "
                    "received", "direction", {d: counts.get(f"bytes_{d}", 0.0)
                                              for d in ("sent", "received")})
    yield _labelled("gossip_served_total", "Peer requests served, by route", "route",
                    _with_prefix(counts, "served_"))
    yield _gauge("gossip_store_items", "Items in the gossip store (DNA, passes, peers, "
                 "agents, votes)", _num(gossip.get("items")))
    peers = GaugeMetricFamily(f"{PREFIX}_gossip_peers", "Gossip peers known, by state",
                              labels=["state"])
    states: dict[str, float] = {}
    listed = gossip.get("members")
    for member in listed if isinstance(listed, list) else []:
        state = str(member.get("state", "unknown")) if isinstance(member, Mapping) else "unknown"
        states[state] = states.get(state, 0.0) + 1
    for state, n in _capped(states):
        peers.add_metric([state], n)
    yield peers


def _dht(dht: Status) -> Iterator[Metric]:
    counts = _counts(dht)
    yield _gauge("dht_contacts", "Spores in the DHT routing table", _num(dht.get("contacts")))
    yield _gauge("dht_alone", "1 when peers are configured but no DHT contact answers",
                 1.0 if dht.get("alone") else 0.0)
    store = dht.get("store")
    store = store if isinstance(store, Mapping) else {}
    yield _gauge("dht_held_values", "DHT values this spore holds for the swarm",
                 _num(store.get("count")))
    yield _gauge("dht_held_bytes", "Bytes of DHT values this spore holds for the swarm",
                 _num(store.get("bytes")))
    rpcs = CounterMetricFamily(f"{PREFIX}_dht_rpcs_total",
                               "DHT RPCs, by name and direction (served: well-formed "
                               "requests from peers; sent: requests this spore made)",
                               labels=["rpc", "direction"])
    for direction in ("served", "sent"):
        for rpc, value in _capped(_with_prefix(counts, f"rpc_{direction}_")):
            rpcs.add_metric([rpc, direction], value)
    yield rpcs
    yield _counter("dht_datagrams_received_total", "UDP datagrams the DHT received",
                   counts.get("datagrams", 0.0))
    yield _counter("dht_rpc_timeouts_total", "DHT requests that got no answer in time",
                   counts.get("timeouts", 0.0))
    mapped = {"contacts", "datagrams", "timeouts", "remote_rejected"}
    events = {k: v for k, v in counts.items() if k not in mapped and not k.startswith(
        ("refused_", "rejected_", "rpc_"))}
    yield _labelled("dht_events_total", "Other DHT counters (published, expired, "
                    "repaired, rate_limited, oversize…)", "event", events)


def _agents(agents: Status) -> Iterator[Metric]:
    yield _gauge("agents", "Agents this spore hosts", _num(agents.get("agents")))
    yield _gauge("agents_spare", "Agents this spore could still host",
                 _num(agents.get("spare")))
    counts = _counts(agents)
    events = {k: v for k, v in counts.items()
              if "_refused_" not in k and not k.startswith("genome_rejected_")}
    yield _labelled("agent_events_total", "Agents' counters (born, divided, culled, "
                    "feedback, scored for peers…)", "event", events)
