"""gateway.metrics.exposition writes what prometheus-client's generate_latest writes,
byte for byte, scrape after scrape, as values, label sets and families change."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client import metrics as client_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

from gateway.events import Direction
from gateway.metrics import Metrics
from gateway.metrics.exposition import Exposition
from gateway.metrics.sample import busy_metrics


class _Families(Collector):
    """A collector handing back whatever families the test sets."""

    def __init__(self) -> None:
        self.families: list[Any] = []

    def collect(self) -> list[Any]:
        return self.families


def _every_kind(values: list[float], label: str, stamp: float | None) -> list[Any]:
    counter = CounterMetricFamily("c_odd name", "a counter\\with \n escapes", labels=["k", "ü"])
    counter.add_metric([label, "x"], values[0], timestamp=stamp)
    counter.add_metric(["b", label], values[1], created=1700000000.5)
    gauge = GaugeMetricFamily("g", "a gauge", labels=["le"])
    for i, v in enumerate(values):
        gauge.add_metric([str(i)], v)
    summary = SummaryMetricFamily("s", "a summary", count_value=3, sum_value=values[2])
    info = InfoMetricFamily("i", "an info", value={"version": label, "z": "1"})
    state = StateSetMetricFamily("st", "a state set", value={"on": True, "off": False})
    gh = GaugeHistogramMetricFamily(
        "gh", "a gauge histogram", buckets=[("1.0", 2), ("+Inf", 3)], gsum_value=values[3]
    )
    unknown = UnknownMetricFamily("u:x", "unknown", value=values[4])
    return [counter, gauge, summary, info, state, gh, unknown]


floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**12), max_value=10**12).map(float),
    st.sampled_from([0.0, -0.0, 1e6, 999999.9, 1e-7, 123456789.0, 1e16, -1e6]),
)


@settings(max_examples=150, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(
            st.lists(floats, min_size=5, max_size=8),
            st.text(max_size=12),
            st.one_of(st.none(), st.floats(min_value=0, max_value=2e9)),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_every_family_kind_matches_generate_latest_scrape_after_scrape(
    rounds: list[tuple[list[float], str, float | None]],
) -> None:
    registry = CollectorRegistry()
    families = _Families()
    registry.register(families)
    exposition = Exposition(registry)
    for values, label, stamp in rounds:
        families.families = _every_kind(values, label, stamp)
        assert exposition.render() == generate_latest(registry)


def test_the_gateways_registry_matches_as_its_metrics_move() -> None:
    """The gateway's own registry, collected once per step (the process and GC figures
    move between two collections), rendered both ways from the same collection."""
    metrics = Metrics()
    registry = metrics.registry
    hist = Histogram("h_seconds", "a labelled histogram", ["action"], registry=registry)
    counter = Counter("requests", "labelled counter", ["action", "status"], registry=registry)
    gauge = Gauge("level", "plain gauge", registry=registry)
    snapshot = CollectorRegistry()
    families = _Families()
    snapshot.register(families)
    exposition = Exposition(snapshot)
    for step in range(6):
        for i in range(50):
            metrics.loop_lag.observe(0.0007 * ((i * 7 + step) % 40))
        hist.labels(f"action{step % 3}").observe(0.01 * step)
        counter.labels(f"a{step}", "200").inc(step)
        gauge.set(-step * 1.5 if step % 2 else math.nan)
        metrics.webhook_deliveries.labels("error").inc()
        families.families = list(registry.collect())
        page = exposition.render()
        assert page == generate_latest(snapshot)
        assert f'requests_total{{action="a{step}",status="200"}} {float(step)}' in page.decode()


def _moving(page: bytes) -> list[str]:
    """The page's lines without the process and GC collectors' (they move between renders)."""
    return [
        line
        for line in page.decode().splitlines()
        if not line.startswith(("process_", "python_gc_"))
    ]


@pytest.mark.parametrize("created", [True, False])
def test_metric_objects_read_directly_match_generate_latest(
    created: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counters and histograms are read from their children, not collected: the same page."""
    monkeypatch.setattr(client_metrics, "_use_created", created)
    registry = CollectorRegistry(target_info={"env": "test", "zone": 'a"b'})
    counter = Counter("hits", "a plain counter", registry=registry)
    labelled = Counter("reqs_total", "by action", ["action", "status"], registry=registry)
    hist = Histogram("lat_seconds", "by kind", ["kind"], registry=registry, buckets=(0.1, 1, 7.5))
    plain = Histogram("size", "unlabelled", registry=registry)
    negative = Histogram("delta", "bounds below zero", buckets=(-1.0, 0.5), registry=registry)
    Counter("never", "labelled, no child yet", ["x"], registry=registry)
    level = Gauge("level", "a gauge", ["room"], registry=registry)
    Gauge("calls", "a function gauge", registry=registry).set_function(lambda: 3.0)
    Summary("took", "a summary", registry=registry).observe(2.5)
    exposition = Exposition(registry)
    # The six counters and histograms take the direct path (the gauges and summary do not).
    assert sum(direct for _, direct in exposition._sources()) == 6
    assert exposition.render() == generate_latest(registry)
    for step in range(5):
        counter.inc(1.5)
        labelled.labels(f'a"{step % 2}\\', "200\n").inc(step)
        hist.labels(f"k{step % 3}").observe(0.3 * step)
        plain.observe(1e7 * step)
        negative.observe(-step)
        level.labels("r").set(step - 2.25)
        assert exposition.render() == generate_latest(registry)
        assert exposition.render() == generate_latest(registry)  # nothing moved since
    labelled.labels("new", "1").reset()
    assert exposition.render() == generate_latest(registry)


def test_the_gateways_registry_read_directly_matches_generate_latest() -> None:
    metrics = busy_metrics()
    registry = metrics.registry
    exposition = Exposition(registry)
    ours, theirs = exposition.render(), generate_latest(registry)
    assert _moving(ours) == _moving(theirs)
    assert [line.split(" ")[0] for line in ours.decode().splitlines()] == [
        line.split(" ")[0] for line in theirs.decode().splitlines()
    ]
    # Scrape after scrape, with new label sets and values.
    for action in ("connect", "bogus"):
        metrics.graph.requests.labels(action, "500").inc()
        metrics.graph.latency.labels(action).observe(3.0)
        metrics.loop_lag.observe(0.2)
        assert _moving(exposition.render()) == _moving(generate_latest(registry))


def test_metrics_render_serves_the_exposition() -> None:
    metrics = Metrics()
    for direction in Direction:
        metrics.graph.requests.labels("accept", "200").inc()
        metrics.graph.latency.labels(str(direction)).observe(0.3)
    page = metrics.render().decode()
    assert page.startswith("# HELP ")
    assert 'gateway_graph_request_seconds_bucket{action="USER_INITIATED",le="0.5"} 1.0' in page
