"""The gateway's Prometheus metrics, served at ``GET /metrics`` with ``prometheus-client``.

One registry per gateway process: the default process collector (CPU, memory,
file descriptors), Python's platform and GC collectors, and the gateway's own
figures (see the README's metrics table):

* :mod:`.calls`: calls by direction and end reason, setup, response and barge-in
  times, and the RTP counters the media path keeps, read at scrape time;
* :mod:`.graph`: Graph API requests by action and status, and their latency;
* webhook deliveries by outcome, event-loop lag.

With several worker processes each worker serves its own ``/metrics`` and is its
own scrape target (see the README): the scrape-time figures live in the worker
that holds the call, which prometheus-client's multiprocess mode cannot read.
"""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .calls import CallMetrics, end_reason_label
from .exposition import Exposition
from .graph import GraphMetrics
from .loop import LoopLagMonitor

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from ..calls import CallManager
    from ..webhooks import WebhookReceiver

__all__ = [
    "CallMetrics",
    "GraphMetrics",
    "LoopLagMonitor",
    "Metrics",
    "end_reason_label",
    "parse_prometheus",
    "process_cpu_seconds",
    "process_rss_bytes",
]

_PAGE = os.sysconf("SC_PAGE_SIZE")
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


def process_cpu_seconds() -> float:
    """User plus system CPU time of this process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def _outcome(status: int) -> str:
    if status < 300:
        return "accepted"
    if status in (401, 403):
        return "refused"
    if status == 413:
        return "too_large"
    if status < 500:
        return "malformed"
    if status == 503:
        return "unavailable"  # cluster mode: Redis unreachable, WhatsApp retries
    return "error"


class Metrics:
    """The registry and everything that feeds it; ``handle`` serves ``/metrics``.

    Made before the Graph client (which sends through :attr:`graph`'s transport);
    :meth:`watch` then connects the call manager and the webhook receiver.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(PLATFORM_COLLECTOR)
        self.registry.register(GC_COLLECTOR)
        self.graph = GraphMetrics(self.registry)
        self.webhook_deliveries = Counter(
            "gateway_webhook_deliveries",
            "Webhook POSTs from the Cloud API, by outcome "
            "(accepted, refused: bad signature, malformed, too_large, error)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("accepted", "refused", "malformed"):
            self.webhook_deliveries.labels(outcome)
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late the event loop woke a 100 ms timer (every due audio frame waited as long)",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.lag = LoopLagMonitor(on_sample=self.loop_lag.observe)
        self.exposition = Exposition(self.registry)
        self.calls: CallMetrics | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def watch(self, calls: CallManager, webhooks: WebhookReceiver) -> None:
        """Observe this call manager's calls and this receiver's duplicates."""
        self.calls = CallMetrics(calls, self.registry)
        calls.observers.append(self.calls)
        self.registry.register(_ReceiverCollector(webhooks, self.lag))

    def webhook_middleware(self, path: str = "/webhook") -> Middleware:
        """An aiohttp middleware counting ``POST path`` deliveries by outcome."""

        @web.middleware
        async def count_deliveries(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.method != "POST" or request.path != path:
                return await handler(request)
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self.webhook_deliveries.labels(_outcome(exc.status)).inc()
                raise
            except Exception:
                self.webhook_deliveries.labels("error").inc()
                raise
            self.webhook_deliveries.labels(_outcome(response.status)).inc()
            return response

        return count_deliveries

    async def serve(self, host: str, port: int) -> None:
        """Also serve ``/metrics`` on a listener of its own (one scrape target per worker)."""
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def aclose(self) -> None:
        """Stop the loop-lag timer and the metrics listener."""
        await self.lag.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def render(self) -> bytes:
        """The Prometheus text exposition: ``generate_latest``'s bytes (:mod:`.exposition`)."""
        if self.calls is not None:
            self.calls.drain_live()
        return self.exposition.render()

    def summary(self) -> dict[str, float]:
        """Every sample by name, summed over label sets (one collection; for the dashboard)."""
        if self.calls is not None:
            self.calls.drain_live()
        values: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return values

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets (upper bound, count), summed over label sets."""
        counts: dict[float, float] = {}
        for family in self.registry.collect():
            if family.name != name:
                continue
            for sample in family.samples:
                if sample.name == f"{name}_bucket":
                    bound = float(sample.labels["le"])
                    counts[bound] = counts.get(bound, 0.0) + sample.value
        return sorted(counts.items())

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _ReceiverCollector(Collector):
    """Webhook duplicates and the loop-lag window's quantiles, read at scrape time."""

    def __init__(self, webhooks: WebhookReceiver, lag: LoopLagMonitor) -> None:
        self.webhooks = webhooks
        self.lag = lag

    def collect(self) -> Iterable[Any]:
        lag = self.lag
        return [
            CounterMetricFamily(
                "gateway_webhook_duplicates",
                "Webhook events dropped as duplicates of one already handled",
                value=self.webhooks.duplicates,
            ),
            # The histogram is the one to aggregate; these quantiles over the last minute
            # are what the load tester samples.
            GaugeMetricFamily(
                "gateway_event_loop_lag_p50_seconds",
                "Median loop lag over the last minute",
                value=lag.quantile(0.5),
            ),
            GaugeMetricFamily(
                "gateway_event_loop_lag_p99_seconds",
                "99th percentile loop lag over the last minute",
                value=lag.quantile(0.99),
            ),
            GaugeMetricFamily(
                "gateway_event_loop_lag_max_seconds",
                "Largest loop lag over the last minute",
                value=max(lag.lags, default=0.0),
            ),
        ]


def parse_prometheus(text: str) -> dict[str, float]:
    """Sample values of a Prometheus text page by sample name, summed over label sets.

    Summing makes ``gateway_calls_total`` the number of ended calls whatever their
    reason (the load tester reads totals like that). Parsed with prometheus-client's
    own parser, so a malformed page raises ValueError.
    """
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values
