"""Process and call figures in Prometheus text format, at ``GET /metrics``.

The load tester reads these to report what the gateway itself spent: CPU
seconds per call-second, memory per call, and how late the event loop runs
(every late wake-up there delays every call's audio).
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
from aiohttp import web

if TYPE_CHECKING:
    from .calls import CallManager
    from .webhooks import WebhookReceiver

_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_cpu_seconds() -> float:
    """User plus system CPU time of this process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class LoopLagMonitor:
    """Measures how late the event loop wakes a timer (a 100 ms tick).

    Lag is what any 20 ms audio frame due at that moment was delayed by.
    """

    def __init__(self, interval: float = 0.1, window: int = 600) -> None:
        self.interval = interval
        self.lags: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin measuring (owned here; :meth:`stop` cancels it)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, loop.time() - due))

    def quantile(self, q: float) -> float:
        """Lag quantile over the window, in seconds (0 before any sample)."""
        if not self.lags:
            return 0.0
        return float(np.quantile(np.fromiter(self.lags, float), q))


class Metrics:
    """Collects the gateway's figures and renders ``/metrics``."""

    def __init__(self, calls: CallManager, webhooks: WebhookReceiver) -> None:
        self.calls = calls
        self.webhooks = webhooks
        self.lag = LoopLagMonitor()
        self.started = time.time()

    def call_seconds(self) -> float:
        """Seconds of calls so far: ended ones plus the live ones up to now."""
        now = time.time()
        total = 0.0
        for record in self.calls.history.values():
            if record.accepted_at and record.ended_at:
                total += record.ended_at - record.accepted_at
        for call in self.calls.calls.values():
            if call.record.accepted_at:
                total += now - call.record.accepted_at
        return total

    def render(self) -> str:
        """The Prometheus text exposition."""
        live = list(self.calls.calls.values())
        inbound = [c.inbound.stats for c in live if c.inbound is not None]
        playout = [c.playout.stats for c in live]
        rows: list[tuple[str, str, float]] = [
            ("process_cpu_seconds_total", "counter", process_cpu_seconds()),
            ("process_resident_memory_bytes", "gauge", process_rss_bytes()),
            ("process_start_time_seconds", "gauge", self.started),
            ("gateway_active_calls", "gauge", len(live)),
            ("gateway_call_seconds_total", "counter", self.call_seconds()),
            ("gateway_calls_ended_total", "counter", len(self.calls.history)),
            ("gateway_calls_rejected_capacity_total", "counter", self.calls.rejected_for_capacity),
            ("gateway_webhook_duplicates_total", "counter", self.webhooks.duplicates),
            ("gateway_event_loop_lag_p50_seconds", "gauge", self.lag.quantile(0.5)),
            ("gateway_event_loop_lag_p99_seconds", "gauge", self.lag.quantile(0.99)),
            ("gateway_event_loop_lag_max_seconds", "gauge", max(self.lag.lags, default=0.0)),
            ("gateway_inbound_packets", "gauge", sum(s.packets for s in inbound)),
            ("gateway_inbound_lost_frames", "gauge", sum(s.lost for s in inbound)),
            ("gateway_inbound_late_packets", "gauge", sum(s.late for s in inbound)),
            ("gateway_playout_frames", "gauge", sum(s.frames_sent for s in playout)),
            ("gateway_playout_late_frames", "gauge", sum(s.late_frames for s in playout)),
        ]
        out = []
        for name, kind, value in rows:
            out.append(f"# TYPE {name} {kind}")
            out.append(f"{name} {value:.6g}" if isinstance(value, float) else f"{name} {value}")
        return "\n".join(out) + "\n"

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        return web.Response(text=self.render(), content_type="text/plain", charset="utf-8")


def parse_prometheus(text: str) -> dict[str, float]:
    """Read back unlabelled samples of a Prometheus text page (for the load tester)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values
