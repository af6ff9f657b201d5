"""A bot raising in every hook: only its own call ends, with ``terminate``, and is freed."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.calls import CallState
from gateway.errors import CallError
from gateway.media.audio import load_wav
from gateway.pipeline.bot import BaseBot, CallControl, Interruption, Utterance
from gateway.pipeline.plugins import default_tts
from gateway.pipeline.session import session_factory
from gateway.sandbox.user import SimulatedUser

from . import fault_figures as ff
from .conftest import AUDIO, start_stack, stop_stack

HOOKS = ("on_start", "on_utterance", "on_dtmf", "on_barge_in", "on_timeout", "on_hangup")


class _Raising(BaseBot):
    """Raises in one hook; does what it takes to reach that hook otherwise."""

    hook = ""

    def _maybe_raise(self, hook: str) -> None:
        if hook == self.hook:
            raise RuntimeError(f"bot bug in {hook}")

    async def on_start(self, call: CallControl) -> None:
        self._maybe_raise("on_start")
        if self.hook == "on_timeout":
            call.expect_input(0.3)
        elif self.hook == "on_barge_in":
            await call.play(load_wav(AUDIO / "cards-003.wav"), label="prompt")

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        self._maybe_raise("on_utterance")

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        self._maybe_raise("on_dtmf")

    async def on_barge_in(self, call: CallControl, interruption: Interruption) -> None:
        self._maybe_raise("on_barge_in")

    async def on_timeout(self, call: CallControl) -> None:
        self._maybe_raise("on_timeout")

    async def on_hangup(self, call: CallControl) -> None:
        self._maybe_raise("on_hangup")


@pytest.mark.parametrize("hook", HOOKS)
async def test_a_bot_raising_in_any_hook_ends_only_its_call(hook: str) -> None:
    bot = type("Raising", (_Raising,), {"hook": hook})
    stack = await start_stack(session=session_factory(bot, default_tts()))
    try:
        call = await SimulatedUser(stack.sandbox, "15551236000", "Hal").place_call()
        async with asyncio.timeout(15):
            if hook == "on_start":
                await call.accepted.wait()  # the bot fails at once: media may never come up
            else:
                await call.media_up.wait()
                # The phone's RTP stream is under way (DTMF replaces its packets).
                while stack.gateway.calls.get(call.call_id).packets_received < 5:
                    await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        start = loop.time()
        if hook in ("on_utterance", "on_barge_in"):
            await asyncio.sleep(0.5)  # the bot's prompt is under way
            call.play(load_wav(AUDIO / "cards-001.wav"))
        elif hook == "on_dtmf":
            with contextlib.suppress(CallError):  # the call may end before the key's end packets
                await call.press("5")
        elif hook == "on_hangup":
            await call.hang_up()
        async with asyncio.timeout(20):
            while call.call_id not in stack.gateway.calls.history:
                await asyncio.sleep(0.02)
        seconds = loop.time() - start
        record = stack.gateway.calls.history[call.call_id]
        actions = [a.action for a in stack.sandbox.actions(call.call_id)]
        assert stack.gateway.calls.calls == {} and record.state is CallState.ENDED
        if hook == "on_hangup":
            # The caller hung up; the bot's error while saying goodbye changes nothing.
            assert actions == ["pre_accept", "accept"]
            assert record.terminate_status == "COMPLETED"
        else:
            assert actions == ["pre_accept", "accept", "terminate"]
            assert record.end_reason is not None and f"bot bug in {hook}" in record.end_reason
        errors = sum(n for c, n in stack.sandbox.webhook_statuses.items() if c >= 500)
        assert errors == 0
        await call.close()
    finally:
        await stop_stack(stack)
    ff.record(
        f"bot raising in {hook}",
        f"call ended {seconds:.1f} s after the trigger; stuck 0, records lost 0, "
        "responses >= 500 0",
    )
