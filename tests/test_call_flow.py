"""Whole user-initiated calls: sandbox user (real aiortc peer) -> gateway, over loopback."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.calls import CallState
from gateway.media.audio import load_wav
from gateway.media.frameclock import frame_clock
from gateway.sandbox import payloads
from gateway.sandbox.user import SimulatedUser, UserCall

from .conftest import AUDIO, PHONE_NUMBER_ID, Stack, start_stack, stop_stack


async def _answered(stack: Stack, name: str = "Ana", wa_id: str = "15551230001") -> UserCall:
    call = await SimulatedUser(stack.sandbox, wa_id, name).place_call()
    async with asyncio.timeout(15):
        await call.accepted.wait()
        await call.media_up.wait()
        # The user hears of accept before the gateway has read Meta's 200 for it.
        while stack.gateway.calls.get(call.call_id).state is not CallState.ACTIVE:
            await asyncio.sleep(0.01)
    return call


def _call_tasks(call_id: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(call_id) and not t.done()]


async def test_answered_call_flows_both_ways_and_cleans_up(stack: Stack) -> None:
    call = await _answered(stack)
    gw_call = stack.gateway.calls.get(call.call_id)
    assert gw_call.state is CallState.ACTIVE

    # pre_accept then accept, with byte-identical SDP meeting Meta's rules.
    actions = stack.sandbox.actions(call.call_id)
    assert [a.action for a in actions] == ["pre_accept", "accept"]
    pre, acc = (a.body["session"]["sdp"] for a in actions)
    assert pre == acc
    assert pre.count("a=fingerprint:") == 1 and "a=fingerprint:sha-256 " in pre
    assert "a=setup:active" in pre and "a=mid:audio" in pre
    assert "a=rtpmap:126 telephone-event/8000" in pre

    await asyncio.wait_for(gw_call.media_up.wait(), 5)
    speech = load_wav(AUDIO / "cards-001.wav")
    await call.play(speech).wait()
    await asyncio.sleep(0.3)
    assert gw_call.inbound is not None and call.inbound is not None
    # The caller's recording reached the gateway, and the gateway's (silence) reached the caller.
    assert gw_call.inbound.stats.packets >= len(speech) // 320
    assert call.inbound.stats.packets > 20
    assert gw_call.playout.stats.frames_sent > 20

    await call.hang_up()
    await asyncio.wait_for(gw_call.ended.wait(), 5)
    assert stack.gateway.calls.calls == {}
    assert gw_call.pc.connectionState == "closed"
    assert _call_tasks(call.call_id) == []
    # Neither side's sender ticks any more (the caller's peer is closed by hang_up too).
    assert frame_clock(asyncio.get_running_loop()).subscribers == 0
    record = stack.gateway.calls.history[call.call_id]
    assert record.terminate_status == "COMPLETED" and record.state is CallState.ENDED
    # The user hung up, so the gateway must not send terminate itself.
    assert [a.action for a in stack.sandbox.actions(call.call_id)] == ["pre_accept", "accept"]


async def test_capacity_reject_keeps_existing_call() -> None:
    stack = await start_stack(max_calls=1)
    try:
        first = await _answered(stack)
        second = await SimulatedUser(stack.sandbox, "15551230002", "Ben").place_call()
        await stack.gateway.calls.drain()
        async with asyncio.timeout(5):
            await second.ended.wait()
        assert [a.action for a in stack.sandbox.actions(second.call_id)] == ["reject"]
        assert stack.gateway.calls.rejected_for_capacity == 1
        assert stack.gateway.calls.get(first.call_id).state is CallState.ACTIVE
        await first.hang_up()
    finally:
        await stop_stack(stack)


async def test_terminate_before_connect_is_never_answered(stack: Stack) -> None:
    user = SimulatedUser(stack.sandbox, "15551230003", "Cy")
    call_id = stack.sandbox.new_call_id()
    await stack.sandbox.deliver(
        payloads.terminate(
            call_id=call_id,
            from_=user.wa_id,
            to=stack.sandbox.business_number,
            business=stack.sandbox.business_number,
            phone_number_id=PHONE_NUMBER_ID,
            direction="USER_INITIATED",
            status="FAILED",
        )
    )
    call = await SimulatedUser(stack.sandbox, user.wa_id, user.name).place_call()
    # Reuse the early-terminated id for the late connect, as Meta would deliver it.
    stack.sandbox.calls.pop(call.call_id)
    call.call_id = call_id
    stack.sandbox.calls[call_id] = call
    await stack.sandbox.deliver(
        payloads.connect_offer(
            call_id=call_id,
            user=user.wa_id,
            user_name=user.name,
            business=stack.sandbox.business_number,
            phone_number_id=PHONE_NUMBER_ID,
            sdp=call.offer_sdp,
        )
    )
    await stack.gateway.calls.drain()
    await asyncio.sleep(0.2)
    assert stack.sandbox.actions(call_id) == []
    assert call_id not in stack.gateway.calls.calls
    assert stack.gateway.calls.history[call_id].end_reason == "terminated before it was answered"
    await call.close()


async def test_bad_sdp_is_rejected_and_other_calls_go_on(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    good = await _answered(stack)
    bad_id = stack.sandbox.new_call_id()
    with caplog.at_level(logging.WARNING, logger="gateway.calls"):
        r = await stack.sandbox.deliver(
            payloads.connect_offer(
                call_id=bad_id,
                user="15551230009",
                user_name="Mallory",
                business=stack.sandbox.business_number,
                phone_number_id=PHONE_NUMBER_ID,
                sdp="v=0\r\nthis is not an offer\r\n",
            )
        )
        assert r.status_code == 200
        await stack.gateway.calls.drain()
        await asyncio.sleep(0.3)
    assert any(
        bad_id in rec.getMessage() and "audio m-line" in rec.getMessage() for rec in caplog.records
    )
    assert bad_id not in stack.gateway.calls.calls
    assert [
        r.action for r in stack.sandbox.requests if r.body and r.body.get("call_id") == bad_id
    ] == ["reject"]
    assert stack.gateway.calls.get(good.call_id).state is CallState.ACTIVE
    await good.hang_up()


async def test_graph_error_on_pre_accept_frees_the_call(stack: Stack) -> None:
    stack.sandbox.fail_next(
        "pre_accept", code=138007, message="The business did not apply the SDP in time"
    )
    call = await SimulatedUser(stack.sandbox, "15551230004", "Dee").place_call()
    await stack.gateway.calls.drain()
    async with asyncio.timeout(5):
        while call.call_id not in stack.gateway.calls.history:
            await asyncio.sleep(0.02)
    record = stack.gateway.calls.history[call.call_id]
    assert "138007" in (record.end_reason or "")
    assert stack.gateway.calls.calls == {}
    assert _call_tasks(call.call_id) == []
    await call.close()


async def test_graph_5xx_then_success_still_answers_the_call(stack: Stack) -> None:
    stack.sandbox.fail_next("pre_accept", status=500, code=1, message="An unknown error occurred")
    stack.sandbox.fail_next("accept", status=503, code=2, message="Service temporarily unavailable")
    call = await _answered(stack)
    attempts = [(r.action, r.status) for r in stack.sandbox.requests if r.action]
    assert attempts == [("pre_accept", 500), ("pre_accept", 200), ("accept", 503), ("accept", 200)]
    assert stack.gateway.calls.get(call.call_id).state is CallState.ACTIVE
    await call.hang_up()


async def test_a_failing_media_teardown_still_ends_and_frees_the_call(stack: Stack) -> None:
    call = await _answered(stack)
    gw_call = stack.gateway.calls.get(call.call_id)
    real_close = gw_call.pc.close

    async def broken_close() -> None:
        await real_close()
        raise RuntimeError("teardown bug")

    gw_call.pc.close = broken_close  # type: ignore[method-assign]
    await gw_call.end("test hang-up", terminate=True)
    assert gw_call.state is CallState.ENDED and stack.gateway.calls.calls == {}
    assert [a.action for a in stack.sandbox.actions(call.call_id)][-1] == "terminate"
    async with asyncio.timeout(5):
        await call.ended.wait()
