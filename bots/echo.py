"""The echo bot: plays each utterance back; ``#`` says goodbye and hangs up."""

from __future__ import annotations

from gateway.pipeline.bot import BaseBot, CallControl, Utterance


class EchoBot(BaseBot):
    """Repeats what the caller says; a test of the whole media path."""

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        """Play the caller's own words back (as ``array('h')``: no numpy on this path)."""
        await call.play(utterance.audio, label="echo")

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        """``#`` ends the call politely."""
        if digit == "#":
            await call.say("Goodbye.", interruptible=False)
            await call.hangup("caller pressed #")
