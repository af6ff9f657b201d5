"""Opus and telephone-event on the payload types the caller's offer chose, not 111/126."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway import sdp
from gateway.media.audio import load_wav
from gateway.pipeline.plugins import session_for
from gateway.pipeline.session import BotSession
from gateway.sandbox.user import SimulatedUser

from .audio_checks import SentSpeech
from .conftest import AUDIO, Stack, start_stack, stop_stack


@pytest.fixture
async def echo_stack() -> AsyncIterator[Stack]:
    s = await start_stack(session=session_for("echo"))
    try:
        yield s
    finally:
        await stop_stack(s)


async def test_a_caller_offering_opus_on_96_and_dtmf_on_101_is_heard_and_hears(
    echo_stack: Stack,
) -> None:
    call = await SimulatedUser(echo_stack.sandbox, "15551110031", "Ana").place_call(
        payload_types=(96, 101)
    )
    assert sdp.payload_type(call.offer_sdp, "opus") == 96
    assert sdp.payload_type(call.offer_sdp, "telephone-event") == 101
    async with asyncio.timeout(15):
        await call.accepted.wait()
        await call.media_up.wait()
    assert call.answer_sdp is not None
    assert sdp.payload_type(call.answer_sdp, "opus") == 96
    assert sdp.payload_type(call.answer_sdp, "telephone-event") == 101
    gateway_call = echo_stack.gateway.calls.get(call.call_id)
    assert gateway_call.inbound is not None
    assert (gateway_call.inbound.opus_pt, gateway_call.inbound.dtmf_pt) == (96, 101)

    # Caller -> gateway on 96: a turn; gateway -> caller on 96: the echo is heard.
    sent = SentSpeech(gateway_call.playout)
    speech = load_wav(AUDIO / "cards-001.wav")
    await call.play(speech).wait()
    heard = await sent.heard(call)
    session = gateway_call.session
    assert isinstance(session, BotSession)
    assert session.metrics.utterances == 1
    said, heard_as_sent = sent.compare(heard, speech)
    assert said > 0.8 and heard_as_sent > 0.95, (said, heard_as_sent)
    assert gateway_call.inbound.stats.packets > 50

    # Keys on 101: '#' makes the echo bot say goodbye and hang up.
    await call.press("#")
    async with asyncio.timeout(10):
        await call.ended.wait()
    assert gateway_call.inbound.stats.dtmf == 1
    assert echo_stack.gateway.calls.history[call.call_id].end_reason == "caller pressed #"
