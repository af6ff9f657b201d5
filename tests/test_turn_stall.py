"""A caller whose packets stop mid-turn still gets an answer (the turn closes on the clock)."""

from __future__ import annotations

import asyncio

from gateway.media.audio import load_wav
from gateway.pipeline.plugins import session_for
from gateway.pipeline.session import BotSession
from gateway.sandbox.user import SimulatedUser

from .audio_checks import SentSpeech
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
        sent = SentSpeech(stack.gateway.calls.get(call.call_id).playout)
        await call.play(speech).wait()
        call.stop_media()
        gateway_call = stack.gateway.calls.get(call.call_id)
        session = gateway_call.session
        assert isinstance(session, BotSession)
        async with asyncio.timeout(10):
            while session.metrics.utterances == 0:
                await asyncio.sleep(0.05)
        # Nothing at all without the wall-clock close; then the whole echo, heard.
        said, heard_as_sent = sent.compare(await sent.heard(call), speech)
        assert said > 0.85 and heard_as_sent > 0.95, (said, heard_as_sent)
        await call.hang_up()
    finally:
        await stop_stack(stack)
