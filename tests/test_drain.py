"""SIGTERM drain in single mode (one process, no Redis): readiness, refusal, timeout."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx

from gateway.calls import CallState
from gateway.sandbox.user import SimulatedUser, UserCall

from .conftest import Stack, start_stack, stop_stack


async def _answered(stack: Stack, wa_id: str) -> UserCall:
    call = await SimulatedUser(stack.sandbox, wa_id, "Ana").place_call(inbound=False)
    async with asyncio.timeout(15):
        await call.accepted.wait()
        while stack.gateway.calls.get(call.call_id).state is not CallState.ACTIVE:
            await asyncio.sleep(0.01)
    return call


async def test_drain_refuses_new_calls_and_waits_for_live_ones(stack: Stack) -> None:
    call = await _answered(stack, "15551230001")
    async with httpx.AsyncClient(base_url=stack.gateway.url) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["mode"] == "single"
        drain = asyncio.create_task(stack.gateway.drain())
        await asyncio.sleep(0.2)
        assert not drain.done()
        answer = await http.get("/readyz")
        assert answer.status_code == 503 and answer.json()["status"] == "draining"
        assert (await http.get("/healthz")).status_code == 200
    # A new call is refused while draining; the live one runs on.
    late = await SimulatedUser(stack.sandbox, "15551230002", "Ben").place_call(inbound=False)
    await asyncio.wait_for(late.ended.wait(), 10)
    assert [a.action for a in stack.sandbox.actions(late.call_id)] == ["reject"]
    assert stack.gateway.calls.get(call.call_id).state is CallState.ACTIVE
    # Webhooks are still handled: the user's hang-up ends the call and the drain.
    await call.hang_up()
    await asyncio.wait_for(drain, 10)
    assert stack.gateway.calls.calls == {}
    assert [a.action for a in stack.sandbox.actions(call.call_id)] == ["pre_accept", "accept"]


async def test_drain_timeout_leaves_calls_to_be_terminated() -> None:
    stack = await start_stack()
    stack.gateway.settings = dataclasses.replace(stack.gateway.settings, drain_timeout=0.3)
    try:
        call = await _answered(stack, "15551230003")
        await asyncio.wait_for(stack.gateway.drain(), 5)  # returns at the timeout
        assert stack.gateway.calls.get(call.call_id).state is CallState.ACTIVE
    finally:
        await stop_stack(stack)  # what `gateway serve` does next: end calls with terminate
    assert [a.action for a in stack.sandbox.actions(call.call_id)][-1] == "terminate"
    assert stack.gateway.calls.history[call.call_id].end_reason == "gateway shutting down"
