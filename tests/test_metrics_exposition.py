"""The gateway's /metrics page (gateway/metrics/exposition.py) is byte for byte what
prometheus-client's ``generate_latest`` writes for the same collection: at the first
scrape, when values move (its cached series text), and for the gateway's own families."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

from gateway.metrics import exposition
from gateway.metrics.exposition import TextExposition

from .conftest import Stack, answered_call


class _Fixed(Collector):
    """The same families at every collection (values that cannot move between renders)."""

    def __init__(self, families: Iterable[Any]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Any]:
        return self.families


class _Custom(Collector):
    """Families made at collection time, with timestamps, odd types and odd text."""

    def __init__(self) -> None:
        self.value = 1.0

    def collect(self) -> Iterable[Any]:
        counter = CounterMetricFamily(
            "custom_events", 'Help with a \\ backslash,\na newline and "quotes"', labels=["kind"]
        )
        counter.add_metric(["a\\b"], self.value, timestamp=1700000000.123)
        counter.add_metric(['say "hi"\nthen'], self.value * 2)
        gauge = GaugeMetricFamily("custom_level", "A gauge", labels=["où"[:1], "zone"])
        gauge.add_metric(["é", "b"], -self.value)
        gauge.add_metric(["x", "y"], math.inf)
        gauge.add_metric(["x", "z"], -math.inf)
        gauge.add_metric(["y", "z"], math.nan)
        histogram = GaugeHistogramMetricFamily(
            "custom_queue", "A gauge histogram", buckets=[("1.0", 3), ("+Inf", 5)], gsum_value=7
        )
        unknown = UnknownMetricFamily("custom_thing", "Untyped", value=1234567.0 * self.value)
        dotted = GaugeMetricFamily("custom.dotted", "A name only UTF-8 allows", value=1e-7)
        return [counter, gauge, histogram, unknown, dotted]


def _registry() -> tuple[CollectorRegistry, _Custom]:
    registry = CollectorRegistry()
    custom = _Custom()
    registry.register(custom)
    counter = Counter("things", "Things", ["direction", "reason"], registry=registry)
    counter.labels("in", "ok").inc()
    counter.labels("out", 'a "quoted" reason').inc(3)
    Gauge("temperature", "No labels", registry=registry).set(21.5)
    histogram = Histogram(
        "latency_seconds", "Latency", ["stage"], buckets=(0.1, 1.0, 10.0), registry=registry
    )
    histogram.labels("accept").observe(0.5)
    Summary("sizes", "A summary", registry=registry).observe(3)
    Info("build", "Build info", registry=registry).info({"version": "1.2", "commit": "abc"})
    Enum("state", "An enum", states=["up", "down"], registry=registry).state("down")
    return registry, custom


def test_the_page_is_generate_latests_at_the_first_scrape_and_after_values_move() -> None:
    registry, custom = _registry()
    page = TextExposition(registry)
    assert page.render() == generate_latest(registry)
    # The second render formats from cached series text: values and new series still show.
    custom.value = 2.5
    counter = registry._names_to_collectors["things_total"]
    assert isinstance(counter, Counter)
    counter.labels("in", "ok").inc(41)
    counter.labels("in", "new label set").inc()
    assert page.render() == generate_latest(registry)
    assert b'things_total{direction="in",reason="new label set"} 1.0' in page.render()


def test_the_series_cache_starts_over_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Label sets that come and go (not the gateway's, whose are bounded) cannot grow it.
    monkeypatch.setattr(exposition, "MAX_SERIES", 30)
    registry, _ = _registry()
    churn = Counter("churn", "One label set at a time", ["id"], registry=registry)
    page = TextExposition(registry)
    for i in range(60):
        churn.labels(str(i)).inc()
        if i:
            churn.remove(str(i - 1))
        assert page.render() == generate_latest(registry)
    assert len(page._series) <= 30 + len(generate_latest(registry).splitlines())


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.text(max_size=12), min_size=1, max_size=4),
    number=st.floats(allow_nan=True, allow_infinity=True),
)
def test_any_label_value_and_number_render_as_generate_latest(
    values: list[str], number: float
) -> None:
    family = GaugeMetricFamily("fuzzed", "Fuzzed", labels=["value"])
    for i, value in enumerate(dict.fromkeys(values)):
        family.add_metric([value], number * i if i else number)
    fixed = _Fixed([family])
    page = TextExposition(fixed)
    assert page.render() == generate_latest(fixed)
    assert page.render() == generate_latest(fixed)


async def test_the_gateways_own_families_render_as_generate_latest(stack: Stack) -> None:
    # A call answered and ended, one live: every family of the gateway has samples.
    ended = await answered_call(stack, "15551230001")
    await ended.hang_up()
    await answered_call(stack, "15551230002")
    metrics = stack.gateway.metrics
    metrics.render()
    # Collected once, rendered both ways (CPU seconds and GC counts move between collections).
    fixed = _Fixed(metrics.registry.collect())
    names = {family.name for family in fixed.families}
    assert {"gateway_calls_active", "gateway_call_setup_seconds", "process_cpu_seconds"} <= names
    assert TextExposition(fixed).render() == generate_latest(fixed)
    # And /metrics is served by it.
    assert isinstance(metrics.exposition, TextExposition)
    assert metrics.exposition.registry is metrics.registry
