"""Graph API requests by action and HTTP status, and how long they took.

An httpx transport wrapper: it sees every attempt (retries included) without
the Graph client knowing about metrics.
"""

from __future__ import annotations

import json
import time

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..aiohttp_transport import AiohttpTransport

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ACTIONS = frozenset({"connect", "pre_accept", "accept", "reject", "terminate"})


class GraphMetrics:
    """``gateway_graph_requests_total{action,status}`` and ``gateway_graph_request_seconds``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_graph_requests",
            "Graph API requests (each attempt), by call action and HTTP status "
            "(status 'error' when no response came)",
            ["action", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "gateway_graph_request_seconds",
            "Graph API request latency, by call action",
            ["action"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def transport(self, inner: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncBaseTransport:
        """A transport that counts and times every request sent through ``inner``."""
        return _MeteredTransport(inner or AiohttpTransport(), self)


class _MeteredTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, metrics: GraphMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        action = _action(request)
        started = time.perf_counter()
        status = "error"
        try:
            response = await self._inner.handle_async_request(request)
            status = str(response.status_code)
            return response
        finally:
            self._metrics.requests.labels(action, status).inc()
            self._metrics.latency.labels(action).observe(time.perf_counter() - started)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _action(request: httpx.Request) -> str:
    """The call action of a ``/calls`` request; else a bounded name for the endpoint."""
    path = request.url.path
    if path.endswith("/calls") and request.method == "POST":
        try:
            action = json.loads(request.content).get("action")
        except (ValueError, AttributeError):
            action = None
        return action if action in _ACTIONS else "calls_other"
    if path.endswith("/messages"):
        return "permission_request"
    if path.endswith("/call_permissions"):
        return "permission_status"
    return "other"
