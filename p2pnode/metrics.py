"""Prometheus metrics of a spore: `/metrics` on the local API.

Counting stays where it is. Each service keeps its own counters for
/v1/status; `StatusCollector` turns one /v1/status snapshot into metric
families at scrape time (`families`, a pure function of that snapshot), so
nothing is counted twice and /metrics cannot drift from /v1/status. The one
figure no service keeps is how long asks take: `time_asks`, a middleware of
the API, observes it into a histogram.

Names follow Prometheus' conventions: the `sporemind_` prefix, base units
(`_seconds`, `_bytes`), `_total` on counters, `sporemind_info` for what this
spore is. Label values are reasons, outcomes and RPC names from our own code,
never a peer's address; a family keeps at most MAX_LABELS of them (the
largest), the rest summed under "other", so a scrape costs what /v1/status
costs however many kinds of garbage peers have sent.

Each API application gets its own `CollectorRegistry` (several spores run in
one test process); the process's own figures (resident memory, CPU, open
files) come from prometheus-client's ProcessCollector, as
`sporemind_process_*`.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["ASK_BUCKETS", "MAX_LABELS", "METRICS_KEY", "AskTimes", "Metrics",
           "StatusCollector", "families", "handler", "time_asks"]

PREFIX = "sporemind"
MAX_LABELS = 64  # as p2pnode.metric_families' (imported at the first scrape only)
ASK_PATH = "/v1/ask"
# An ask is ~10 ms alone on a laptop, seconds on a Pi fanning out to slow peers.
ASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Status = Mapping[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AskTimes:
    """How long answered asks took, as a histogram's counts (prometheus-client
    is imported at the first scrape only; until then an ask costs a bisect)."""

    def __init__(self, buckets: Iterable[float] = ASK_BUCKETS) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket; the last: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1  # le: bound >= seconds
        self.sum += seconds

    def family(self) -> Metric:
        from prometheus_client.metrics_core import HistogramMetricFamily

        cumulative, buckets = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            buckets.append((_go_float(bound), float(cumulative)))
        return HistogramMetricFamily(
            f"{PREFIX}_ask_duration_seconds",
            "Time to answer an ask over the local API (answered asks only)",
            buckets=buckets, sum_value=self.sum)


def _go_float(bound: float) -> str:
    """A bucket's `le` as prometheus-client writes it ("0.005", "1.0", "+Inf")."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class StatusCollector:
    """Metric families of the /v1/status snapshot handed to `Metrics.render`,
    and the ask histogram."""

    def __init__(self, asks: AskTimes) -> None:
        self.snapshot: Status = {}
        self.asks = asks

    def collect(self) -> Iterable[Metric]:
        return [self.asks.family(), *families(self.snapshot)]

    def describe(self) -> Iterable[Metric]:
        return []  # names depend on the snapshot: nothing to check at registration


class Metrics:
    """One API's metrics: the ask histogram, the status families, the process
    (a registry of its own, built at the first scrape)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.ask_seconds = AskTimes()
        self._status = StatusCollector(self.ask_seconds)
        self._registry: CollectorRegistry | None = None

    def render(self, status: Status, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) of one scrape, in the format `accept` asks for
        (OpenMetrics or Prometheus text; text 0.0.4 by default)."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept)
        registry = self._registry or self._build()
        self._status.snapshot = status
        try:
            return encode(registry), content_type
        finally:
            self._status.snapshot = {}

    def _build(self) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry, ProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self._status)
        ProcessCollector(namespace=PREFIX, registry=registry)
        self._registry = registry
        return registry


METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


def handler(status: Callable[[web.Request], Awaitable[Status]]) -> Handler:
    """The /metrics route: what `status` (the /v1/status builder) says, as metrics."""

    async def metrics(request: web.Request) -> web.Response:
        snapshot = await status(request)
        body, content_type = request.app[METRICS_KEY].render(
            snapshot, ",".join(request.headers.getall(hdrs.ACCEPT, []))[:1024])
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})

    return metrics


@web.middleware
async def time_asks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Observe how long each answered POST /v1/ask took (a refused or failed
    one is no latency of answering: it is left out)."""
    resource = request.match_info.route.resource
    if request.method != "POST" or resource is None or resource.canonical != ASK_PATH:
        return await handler(request)
    metrics = request.app[METRICS_KEY]
    started = metrics.clock()
    response = await handler(request)
    metrics.ask_seconds.observe(metrics.clock() - started)
    return response


# -- the snapshot as families (p2pnode.metric_families, imported at a scrape) --------------
def families(status: Status) -> Iterator[Metric]:
    """Every family one /v1/status snapshot yields (nothing for a part it lacks)."""
    from p2pnode import metric_families

    return metric_families.families(status)
