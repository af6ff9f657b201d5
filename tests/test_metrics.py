"""/metrics with prometheus-client: the page parses, and its figures move with real calls."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.media.audio import load_wav
from gateway.media.frameclock import TICK
from gateway.metrics import end_reason_label, parse_prometheus
from gateway.metrics.loop import LoopLagMonitor, quantile
from gateway.pipeline.plugins import session_for
from gateway.sandbox.user import SimulatedUser

from .conftest import AUDIO, Stack, answered_call, start_stack, stop_stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(stack: Stack) -> Samples:
    """Every sample of the page, keyed by name and labels (parsed by prometheus-client)."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{stack.gateway.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_move_as_calls_are_placed_and_end() -> None:
    stack = await start_stack(max_calls=1, session=session_for("echo"))
    try:
        before = await scrape(stack)
        assert value(before, "gateway_calls_active", direction="USER_INITIATED") == 0
        assert value(before, "process_cpu_seconds_total") > 0
        assert value(before, "gateway_calls_capacity") == 1

        call = await answered_call(stack)
        speech = load_wav(AUDIO / "cards-001.wav")
        await call.play(speech).wait()
        # The echo bot answers the turn: wait for its first frame to reach the caller.
        gw_call = stack.gateway.calls.get(call.call_id)
        async with asyncio.timeout(15):
            while not gw_call.session.metrics.response_latencies_ms:
                await asyncio.sleep(0.05)

        # A second caller finds the gateway full.
        second = await SimulatedUser(stack.sandbox, "15551230002", "Ben").place_call()
        async with asyncio.timeout(10):
            await second.ended.wait()

        live = await scrape(stack)
        assert value(live, "gateway_calls_active", direction="USER_INITIATED") == 1
        assert value(live, "gateway_calls_started_total", direction="USER_INITIATED") == 1
        assert value(live, "gateway_calls_rejected_total", reason="capacity") == 1
        assert value(live, "gateway_rtp_received_packets_total") >= len(speech) // 320
        assert value(live, "gateway_rtp_received_bytes_total") > value(
            live, "gateway_rtp_received_packets_total"
        )
        assert value(live, "gateway_rtp_sent_packets_total") > 50
        assert value(live, "gateway_call_seconds_total") > 1
        for stage in ("accept", "media"):
            assert (
                value(
                    live,
                    "gateway_call_setup_seconds_count",
                    direction="USER_INITIATED",
                    stage=stage,
                )
                == 1
            )
        assert value(live, "gateway_response_seconds_count") >= 1
        assert value(live, "gateway_graph_requests_total", action="accept", status="200") == 1
        assert value(live, "gateway_graph_requests_total", action="reject", status="200") == 1
        assert value(live, "gateway_graph_request_seconds_count", action="pre_accept") == 1
        assert value(live, "gateway_webhook_deliveries_total", outcome="accepted") >= 2

        session = gw_call.session
        await call.hang_up()
        async with asyncio.timeout(10):
            await gw_call.ended.wait()
        after = await scrape(stack)
        # Every figure the session took is in the histogram, up to the call's end.
        responses = len(session.metrics.response_latencies_ms)
        assert value(after, "gateway_response_seconds_count") == responses
        assert value(after, "gateway_calls_active", direction="USER_INITIATED") == 0
        assert (
            value(
                after, "gateway_calls_total", direction="USER_INITIATED", end_reason="remote_hangup"
            )
            == 1
        )
        # Counters of an ended call stay in the totals: they never go down.
        for name in ("gateway_rtp_received_packets_total", "gateway_rtp_sent_packets_total"):
            assert value(after, name) >= value(live, name)
        assert value(after, "gateway_response_seconds_count") >= value(
            live, "gateway_response_seconds_count"
        )
    finally:
        await stop_stack(stack)


async def test_refused_webhooks_are_counted(stack: Stack) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{stack.gateway.url}/webhook", content=b"{}")
    assert response.status_code == 401
    samples = await scrape(stack)
    assert value(samples, "gateway_webhook_deliveries_total", outcome="refused") == 1


def test_end_reasons_are_a_bounded_set() -> None:
    assert end_reason_label("terminated by WhatsApp (completed)") == "remote_hangup"
    assert end_reason_label("terminated by WhatsApp (failed)") == "remote_failed"
    assert end_reason_label("not answered within 45 s") == "no_answer"
    assert end_reason_label("bad offer: no audio") == "bad_sdp"
    assert end_reason_label("caller said goodbye") == "bot_hangup"
    assert end_reason_label(None) == "unknown"


def test_parse_prometheus_sums_label_sets() -> None:
    text = (
        "# TYPE gateway_calls_total counter\n"
        'gateway_calls_total{end_reason="a"} 2\n'
        'gateway_calls_total{end_reason="b"} 3\n'
    )
    assert parse_prometheus(text)["gateway_calls_total"] == 5


def test_metrics_port_adds_the_worker_index() -> None:
    from gateway.config import load_settings

    base = {
        "WHATSAPP_ACCESS_TOKEN": "t",
        "WHATSAPP_APP_SECRET": "s",
        "WHATSAPP_VERIFY_TOKEN": "v",
        "WHATSAPP_PHONE_NUMBER_ID": "1",
    }
    assert load_settings(base).metrics_port is None
    assert load_settings({**base, "GATEWAY_METRICS_PORT": "9100"}).metrics_port == 9100
    worker = {**base, "GATEWAY_METRICS_PORT": "9100", "GATEWAY_WORKER_INDEX": "3"}
    assert load_settings(worker).metrics_port == 9103


async def test_metrics_on_a_port_of_their_own() -> None:
    stack = await start_stack(env={"GATEWAY_METRICS_PORT": "0"})
    try:
        port = stack.gateway.metrics.port
        assert port is not None and port != stack.gateway.port
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
            other = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert "gateway_calls_active" in parse_prometheus(response.text)
        assert other.status_code == 404  # only the metrics there
    finally:
        await stop_stack(stack)


def test_loop_lag_quantile_matches_numpys_linear_method() -> None:
    rng = random.Random(7)
    assert quantile([], 0.99) == 0.0
    for n in (1, 2, 3, 10, 600):
        values = [rng.random() for _ in range(n)]
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)), abs=1e-12)


async def test_loop_lag_is_a_timer_callback_that_sees_a_stall_and_stops() -> None:
    seen: list[float] = []

    def on_sample(lag: float) -> None:
        seen.append(lag)
        if len(seen) == 1:
            raise RuntimeError("a broken observer")  # must not stop the measuring

    monitor = LoopLagMonitor(interval=0.01, on_sample=on_sample)
    loop = asyncio.get_running_loop()
    handler_calls: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: handler_calls.append(context))
    try:
        monitor.start()
        assert monitor.running
        # No task of its own: ten wake-ups a second in every gateway, none a task step.
        assert all("LoopLagMonitor" not in repr(t.get_coro()) for t in asyncio.all_tasks())
        # A stall on purpose, past the first tick's due time (on the frame clock's grid:
        # up to a tick past the interval).
        time.sleep(0.05 + TICK)  # noqa: ASYNC251
        while len(seen) < 3:
            await asyncio.sleep(0.005)
        await monitor.stop()
        assert not monitor.running
        count = len(seen)
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(None)
    assert len(seen) == count  # no tick after stop
    assert seen[0] >= 0.04  # woken at least the stall's remainder late
    assert list(monitor.lags) == seen
    assert len(handler_calls) == 1  # the observer's error went to the loop, once
