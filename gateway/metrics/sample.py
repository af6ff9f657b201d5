"""A registry filled as a gateway that has taken calls fills it, with no call behind it.

For checking and timing the ``/metrics`` page without a running gateway: the
exposition tests (``tests/test_metrics_exposition.py``) and the scrape benchmark
(``benchmarks/metrics_scrape.py``) read the same label sets. Nothing in the serving
gateway imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from ..events import Direction
from . import Metrics
from .calls import CallMetrics

if TYPE_CHECKING:
    from ..calls import CallManager


class _NoCalls:
    """What :class:`CallMetrics` reads of a call manager, with no calls."""

    calls: dict[str, Any] = {}
    max_calls = 100


def busy_metrics() -> Metrics:
    """The gateway's registry with the label sets of a gateway that has taken calls:
    both directions, both setup stages, every Graph action, every webhook outcome,
    response and barge-in figures, a full loop-lag window."""
    metrics = Metrics()
    for i in range(600):
        metrics.loop_lag.observe(0.0005 * (i % 40))
    for action in ("pre_accept", "accept", "terminate", "connect", "reject"):
        metrics.graph.requests.labels(action, "200").inc()
        metrics.graph.latency.labels(action).observe(0.05)
    for outcome in ("accepted", "refused", "malformed"):
        metrics.webhook_deliveries.labels(outcome).inc()
    # CallMetrics' event-driven families, without a call manager behind them.
    calls = CallMetrics(cast("CallManager", _NoCalls()), metrics.registry)
    metrics.calls = calls
    for direction in Direction:
        calls.started.labels(str(direction)).inc()
        calls.ended.labels(str(direction), "remote_hangup").inc()
        for stage in ("accept", "media"):
            calls.setup.labels(str(direction), stage).observe(0.3)
    calls.response.observe(0.4)
    calls.barge_in.observe(0.1)
    return metrics
