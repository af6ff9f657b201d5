"""Calls that must end whatever fails: bad ids, Graph errors in teardown, dead media.

Each test breaks one thing and checks the call still reaches ENDED, frees its
slot, keeps its record and (where WhatsApp must hear of it) sends ``terminate``.
The timeouts are shortened here; ``tests/test_faults_slow.py`` runs the defaults.
"""

from __future__ import annotations

import asyncio
import gc
import os
import weakref

from gateway import rtc
from gateway.calls import CallState
from gateway.events import CallConnect, Direction
from gateway.pipeline.plugins import session_for
from gateway.sandbox.user import SimulatedUser, UserCall
from gateway.sandbox.user_sdp import MediaFault, whatsapp_offer

from .conftest import Stack, start_stack, stop_stack
from .test_call_flow import _answered


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def _ended(stack: Stack, call_id: str) -> float:
    """Wait until the gateway has the call in its history; seconds waited."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(20):
        while call_id not in stack.gateway.calls.history:
            await asyncio.sleep(0.02)
    assert call_id not in stack.gateway.calls.calls
    assert stack.gateway.calls.history[call_id].state is CallState.ENDED
    return loop.time() - start


def _actions(stack: Stack, call_id: str) -> list[str]:
    return [a.action or "" for a in stack.sandbox.actions(call_id)]


async def _whatsapp_offer() -> str:
    pc = rtc.new_peer_connection()
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    offer = whatsapp_offer(pc.localDescription.sdp)
    await pc.close()
    return str(offer)


async def test_a_call_id_the_graph_api_cannot_carry_still_ends(stack: Stack) -> None:
    # The webhook receiver refuses lone surrogates; this is the call path's own
    # guarantee, for whatever else could break a Graph request mid-answer.
    call_id = "wacid.\ud800bad"
    stack.gateway.calls.dispatch(
        CallConnect(
            call_id=call_id,
            phone_number_id="1",
            from_="15551230001",
            to="15550783881",
            direction=Direction.USER_INITIATED,
            sdp_type="offer",
            sdp=await _whatsapp_offer(),
            timestamp=0,
        )
    )
    await _ended(stack, call_id)
    record = stack.gateway.calls.history[call_id]
    assert record.end_reason is not None and "internal error" in record.end_reason


async def test_terminate_raising_anything_still_ends_the_call(stack: Stack) -> None:
    call = await _answered(stack)
    gw_call = stack.gateway.calls.get(call.call_id)

    async def broken_terminate(call_id: str) -> None:
        raise UnicodeEncodeError("utf-8", call_id, 0, 1, "surrogates not allowed")

    stack.gateway.graph.terminate = broken_terminate  # type: ignore[method-assign]
    await gw_call.end("test hang-up", terminate=True)
    assert gw_call.state is CallState.ENDED and stack.gateway.calls.calls == {}
    assert stack.gateway.calls.history[call.call_id].end_reason == "test hang-up"
    await call.hang_up()


async def _placed(stack: Stack, fault: MediaFault | None = None) -> UserCall:
    return await SimulatedUser(stack.sandbox, "15551230002", "Bo").place_call(fault=fault)


async def test_ice_that_never_completes_is_terminated(stack: Stack) -> None:
    stack.gateway.calls.media_timeout = 1.0
    call = await _placed(stack, MediaFault.NO_ICE)
    seconds = await _ended(stack, call.call_id)
    assert _actions(stack, call.call_id) == ["pre_accept", "accept", "terminate"]
    assert stack.gateway.calls.history[call.call_id].end_reason == "no media within 1 s of answer"
    assert seconds < 15  # bounded, not stuck (the figure itself is in the slow suite)


async def test_dtls_that_fails_is_terminated(stack: Stack) -> None:
    call = await _placed(stack, MediaFault.BAD_DTLS)
    await _ended(stack, call.call_id)
    assert _actions(stack, call.call_id)[-1] == "terminate"
    assert stack.gateway.calls.history[call.call_id].end_reason == "media path failed"


async def test_media_that_stops_is_terminated(stack: Stack) -> None:
    stack.gateway.calls.media_idle_timeout = 1.0
    call = await _answered(stack)
    await asyncio.sleep(1.5)  # media flowing: the watchdog must not fire
    assert call.call_id in stack.gateway.calls.calls
    call.stop_media()
    await _ended(stack, call.call_id)
    assert _actions(stack, call.call_id) == ["pre_accept", "accept", "terminate"]
    reason = stack.gateway.calls.history[call.call_id].end_reason
    assert reason is not None and reason.startswith("no inbound media for")


async def test_an_ended_call_frees_its_threads_and_itself() -> None:
    stack = await start_stack(session=session_for("echo"))
    try:
        await _frees_its_threads_and_itself(stack)
    finally:
        await stop_stack(stack)


async def _frees_its_threads_and_itself(stack: Stack) -> None:
    # Warm up: the first call loads what every later call shares.
    first = await _answered(stack)
    await first.hang_up()
    await _ended(stack, first.call_id)
    gc.collect()
    idle = _threads()

    call = await _answered(stack)
    gw_call = stack.gateway.calls.get(call.call_id)
    while gw_call.session is None:  # a bot session, with its own references to the call
        await asyncio.sleep(0.01)
    # A call up takes no thread: the gateway decodes on the loop, and aiortc's decoder
    # thread (one per receiver) is not started on either side (gateway/media/receiver.py).
    assert _threads() <= idle
    ref = weakref.ref(gw_call)
    inbound, playout = gw_call.inbound, gw_call.playout
    del gw_call
    await call.hang_up()
    await _ended(stack, call.call_id)
    # Codecs are freed as the call ends, not at the next full garbage collection.
    assert inbound is not None and not hasattr(inbound, "_decoder")
    assert playout._encoder is None
    del inbound, playout
    gc.disable()
    try:
        await asyncio.sleep(0.5)  # aiortc's own tasks wind down
        assert _threads() <= idle
        assert ref() is None, [
            (type(r).__name__, list(r)[:8] if isinstance(r, dict) else repr(r)[:200])
            for r in gc.get_referrers(ref())
        ]
    finally:
        gc.enable()
