"""/metrics: the Prometheus exposition of a real daemon, parsed as a scraper
parses it, moving when the spore is used; refused like every API route to
web pages of other sites; bounded whatever peers send (p2pnode.metrics)."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from p2pnode.metrics import MAX_LABELS, Metrics, families
from tests.conftest import Daemon, make_daemon, start_swarm, stop_all, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(d: Daemon, headers: dict[str, str] | None = None, *, token: bool = False
           ) -> tuple[int, str, str]:
    """(status, content type, body) of GET /metrics with exactly these headers."""
    sent = {"Host": f"127.0.0.1:{d.port}", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {(d.state_dir / 'api.token').read_text().strip()}"
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    try:
        conn.request("GET", "/metrics", headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode()
    finally:
        conn.close()


def samples(d: Daemon, *, token: bool = False) -> Samples:
    code, kind, body = scrape(d, token=token)
    assert code == 200 and kind.startswith("text/plain; version=0.0.4"), (code, kind, body)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def test_a_scrape_moves_after_teach_ask_rate(running: Daemon) -> None:
    before = samples(running)
    taught = running.cli_json("teach", "Prometheus scrapes /metrics every 15 seconds.")
    answer = running.cli_json("ask", "how often does Prometheus scrape?")
    assert answer["sources"][0]["id"] == taught["id"]
    running.cli_json("rate", answer["answer_id"], "up")
    after = samples(running)
    for name, labels in [("sporemind_asks_total", {}), ("sporemind_teaches_total", {}),
                         ("sporemind_ratings_total", {"source": "here"}),
                         ("sporemind_ask_duration_seconds_count", {}),
                         ("sporemind_memories", {})]:
        assert value(after, name, **labels) == value(before, name, **labels) + 1, name
    assert value(after, "sporemind_ask_duration_seconds_sum") > value(
        before, "sporemind_ask_duration_seconds_sum")
    assert value(after, "sporemind_ask_duration_seconds_bucket", le="+Inf") == value(
        after, "sporemind_ask_duration_seconds_count")
    # the same figures /v1/status says, and what the spore is
    status = running.json("GET", "/v1/status")
    assert value(after, "sporemind_asks_total") == status["counters"]["asks"]
    assert value(after, "sporemind_agents") == status["agents"]["agents"] >= 1
    assert value(after, "sporemind_process_resident_memory_bytes") > 50 * 1024 * 1024
    info = [k for k in after if k[0] == "sporemind_info"]
    assert [dict(k[1])["node_id"] for k in info] == [status["node_id"]]
    assert ("sporemind_gossip_rounds_total", (("outcome", "idle"),)) in after
    assert ("sporemind_dht_contacts", ()) in after


def test_a_cross_site_or_rebinding_scrape_is_refused_and_counted(running: Daemon) -> None:
    before = samples(running)
    code, kind, body = scrape(running, {"Origin": "https://evil.example"})
    assert code == 403 and kind.startswith("application/json") and "cross-site" in body
    code, _, body = scrape(running, {"Host": f"evil.example:{running.port}"})
    assert code == 403 and "DNS rebinding" in body
    code, _, _ = scrape(running, {"Sec-Fetch-Site": "cross-site"})
    assert code == 403
    after = samples(running)
    for reason in ("origin", "host", "cross_site"):
        key = ("sporemind_refusals_total", (("layer", "api"), ("reason", reason)))
        assert after[key] == before.get(key, 0.0) + 1, reason
    # the API's own origin is served
    assert scrape(running, {"Origin": f"http://127.0.0.1:{running.port}"})[0] == 200


def test_openmetrics_when_the_scraper_asks_for_it(running: Daemon) -> None:
    code, kind, body = scrape(running, {"Accept": "application/openmetrics-text; "
                                                  "version=1.0.0; charset=utf-8"})
    assert code == 200 and kind.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(body)}
    assert {"sporemind_asks", "sporemind_ask_duration_seconds", "sporemind_refusals",
            "sporemind"} <= names  # an info family is named without its _info


def test_the_api_document_lists_metrics(running: Daemon) -> None:
    doc = running.json("GET", "/v1/openapi.json")
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_beyond_loopback_a_scrape_needs_the_token(daemon: Daemon) -> None:
    daemon.env["SPORE_HOST"] = "0.0.0.0"
    daemon.start()
    code, _, body = scrape(daemon)
    assert code == 401 and "api.token" in body
    assert value(samples(daemon, token=True), "sporemind_memories") == 0
    daemon.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    spores = [make_daemon(tmp_path_factory.mktemp(f"m{i}")) for i in range(2)]
    for d in spores:
        d.env["SPORE_GOSSIP_INTERVAL"] = "0.2"
    try:
        start_swarm(spores)
        yield spores
    finally:
        stop_all(spores)


def test_a_swarm_counts_gossip_rounds_and_dht_rpcs(pair: list[Daemon]) -> None:
    founder, member = pair

    def gossiped(d: Daemon) -> bool:
        got = samples(d)
        rounds = sum(value(got, "sporemind_gossip_rounds_total", outcome=outcome)
                     for outcome in ("synced", "same"))
        return rounds >= 1 and value(got, "sporemind_dht_contacts") >= 1

    for d in pair:
        wait_for(lambda d=d: gossiped(d), 60, f"spore {d.port} to gossip and hold a contact")
    # the joiner's first round brought what it lacked (the founder's pass, its card…)
    assert value(samples(member), "sporemind_gossip_rounds_total", outcome="synced") >= 1
    got = samples(member)
    rpcs = {dict(k[1])["rpc"]: v for k, v in got.items()
            if k[0] == "sporemind_dht_rpcs_total" and dict(k[1])["direction"] == "sent"}
    assert rpcs.get("challenge", 0) >= 1 and sum(rpcs.values()) >= 2, rpcs
    served = [v for k, v in samples(founder).items()
              if k[0] == "sporemind_dht_rpcs_total" and dict(k[1])["direction"] == "served"]
    assert sum(served) >= 1
    assert value(got, "sporemind_gossip_bytes_total", direction="sent") > 0
    assert value(got, "sporemind_members") == 2
    assert got.get(("sporemind_gossip_peers", (("state", "alive"),)), 0) >= 1
    # and `spore peers` and `spore status` of a spore in a swarm read as text too
    for args, shown in ((["peers"], founder.dht.split(":")[1]), (["status"], "1 alive")):
        out = member.cli(*args, check=True).stdout
        assert shown in out and not any(r in out for r in ("{'", "[{", "': ", "\": ")), out


# -- the families of a snapshot (pure) -----------------------------------------------------
def _names(status: dict[str, object]) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in families(status):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_label_values_are_capped_and_spelled_as_labels() -> None:
    refused = {f"reason {i}\n<b>": i + 1 for i in range(1000)}
    got = _names({"node_id": "ab", "api": {"refused": refused, "malformed_requests": 0},
                  "gossip": {"counters": {f"refused_x{i}": 1 for i in range(500)}}})
    api = [(labels["reason"], v) for labels, v in got["sporemind_refusals_total"]
           if labels["layer"] == "api"]
    assert len(api) == MAX_LABELS and sum(v for _, v in api) == sum(refused.values())
    assert ("other", sum(range(1, 1000 - MAX_LABELS + 2))) in api
    assert all(r.replace("_", "").isalnum() and r.islower() for r, _ in api)
    gossip = [lb for lb, _ in got["sporemind_refusals_total"] if lb["layer"] == "gossip"]
    assert len(gossip) == MAX_LABELS


def test_a_spore_without_swarm_parts_still_scrapes() -> None:
    got = _names({"node_id": "ab", "memories": 3, "counters": {"asks": 2},
                  "dht": None, "gossip": None, "agents": None})
    assert got["sporemind_memories"] == [({}, 3.0)] and got["sporemind_asks_total"] == [({}, 2.0)]
    assert "sporemind_dht_contacts" not in got and "sporemind_agents" not in got
    assert list(families({})) == []


def test_each_api_has_its_own_registry(tmp_path: Path) -> None:
    a, b = Metrics(), Metrics()
    a.ask_seconds.observe(0.5)
    body_a, kind = a.render({"node_id": "a", "counters": {"asks": 1}})
    body_b, _ = b.render({"node_id": "b", "counters": {"asks": 0}})
    assert kind.startswith("text/plain")
    assert b"sporemind_ask_duration_seconds_count 1.0" in body_a
    assert b"sporemind_ask_duration_seconds_count 0.0" in body_b
    assert b'node_id="a"' in body_a and b'node_id="a"' not in body_b
    # a snapshot is used for one scrape only
    assert b"sporemind_asks_total" not in a.render({})[0]


def test_the_ask_histogram_is_prometheus_clients_own() -> None:
    """AskTimes keeps the counts (prometheus-client is imported at the first
    scrape only) and renders them as prometheus-client's Histogram would:
    the same buckets, counts and sum for the same observations."""
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.exposition import generate_latest

    from p2pnode.metrics import ASK_BUCKETS

    ours, registry = Metrics(), CollectorRegistry()
    theirs = Histogram("sporemind_ask_duration_seconds", "x", buckets=ASK_BUCKETS,
                       registry=registry)
    for seconds in (0.0, 0.005, 0.0051, 0.01, 0.3, 1.0, 29.0, 30.0, 31.0, 1e9):
        ours.ask_seconds.observe(seconds)
        theirs.observe(seconds)

    def samples(body: bytes) -> dict[tuple[str, str], float]:
        return {(s.name, s.labels.get("le", "")): s.value
                for f in text_string_to_metric_families(body.decode())
                for s in f.samples if f.name == "sporemind_ask_duration_seconds"
                and not s.name.endswith("_created")}

    got = samples(ours.render({})[0])
    assert got == samples(generate_latest(registry)) and len(got) == len(ASK_BUCKETS) + 3
