"""A caller whose packets stop mid-turn still gets an answer (the turn closes on the clock)."""

from __future__ import annotations

import asyncio

from gateway.media.audio import load_wav
from gateway.pipeline.plugins import session_for
from gateway.pipeline.session import BotSession
from gateway.sandbox.user import SimulatedUser

from .audio_checks import find_in
from .conftest import AUDIO, start_stack, stop_stack


async def test_a_caller_who_stops_sending_after_speaking_gets_the_echo() -> None:
    stack = await start_stack(session=session_for("echo"))
    try:
        call = await SimulatedUser(stack.sandbox, "15551110021", "Ana").place_call()
        async with asyncio.timeout(15):
            await call.accepted.wait()
            await call.media_up.wait()
        # The words and nothing after them: the segmenter never sees the silence
        # that would end the turn by its frame count.
        speech = load_wav(AUDIO / "cards-005.wav")[: 3260 * 16]
        await call.play(speech).wait()
        call.stop_media()
        gateway_call = stack.gateway.calls.get(call.call_id)
        session = gateway_call.session
        assert isinstance(session, BotSession)
        async with asyncio.timeout(10):
            while session.metrics.utterances == 0:
                await asyncio.sleep(0.05)
        # Until the gateway has sent the whole echo (not a fixed sleep: on a loaded
        # machine the echo finished after it, and the tail was missing).
        async with asyncio.timeout(len(speech) / 16000 + 10):
            while gateway_call.playout.stats.speech_frames == 0 or gateway_call.playout.is_playing:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the last packets' way to the caller
        corr, _ = find_in(call.heard, speech)
        assert corr > 0.7, corr  # nothing at all without the wall-clock close; 0.9+ when quiet
        await call.hang_up()
    finally:
        await stop_stack(stack)
