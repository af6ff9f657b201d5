"""Barge-in that tells a cough from a turn: pause at once, resume if it was not speech."""

from __future__ import annotations

import asyncio

import numpy as np

from gateway.media.audio import load_wav
from gateway.pipeline.bot import BaseBot, CallControl, Interruption, PlaybackResult, Utterance
from gateway.pipeline.plugins import default_tts
from gateway.pipeline.session import BotSession, session_factory
from gateway.sandbox.user import SimulatedUser

from .audio_checks import SentSpeech, loud_frames
from .conftest import AUDIO, start_stack, stop_stack

PROMPT = (
    "Thank you for calling. Our opening hours are Monday to Friday from nine in the "
    "morning to five in the afternoon, and on Saturdays from ten to two."
)


class Speaker(BaseBot):
    """Says one long prompt and records what happened to it."""

    results: list[PlaybackResult] = []
    interruptions: list[Interruption] = []
    utterances: list[Utterance] = []
    sent: SentSpeech | None = None

    async def on_start(self, call: CallControl) -> None:
        assert isinstance(call, BotSession)
        Speaker.sent = SentSpeech(call.call.playout)
        Speaker.results.append(await call.say(PROMPT))

    async def on_barge_in(self, call: CallControl, interruption: Interruption) -> None:
        Speaker.interruptions.append(interruption)

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        Speaker.utterances.append(utterance)


def cough(ms: int = 150, seed: int = 0, rms: float = 6000.0) -> np.ndarray:
    """A cough-like sound: band-limited noise with a sharp attack and a fast decay."""
    n = ms * 16
    spectrum = np.fft.rfft(np.random.default_rng(seed).normal(size=n))
    f = np.fft.rfftfreq(n, 1 / 16000)
    spectrum[(f < 300) | (f > 3000)] = 0
    x = np.fft.irfft(spectrum, n)
    t = np.arange(n) / 16000
    x *= np.minimum(1.0, t / 0.01) * np.exp(-t / 0.06)
    x *= rms / np.sqrt(np.mean(x**2))
    return x.astype(np.int16)


def room_noise(seconds: float) -> np.ndarray:
    """The caller's room: the quiet lead-in of a recording, looped."""
    quiet = load_wav(AUDIO / "cards-005.wav")[: 160 * 16]
    return np.tile(quiet, int(seconds * 16000) // len(quiet) + 1)[: int(seconds * 16000)]


async def test_a_cough_pauses_the_prompt_which_then_goes_on_to_the_end() -> None:
    Speaker.results, Speaker.interruptions, Speaker.utterances = [], [], []
    tts = default_tts()
    prompt = np.concatenate([c async for c in tts.synthesize(PROMPT)])
    stack = await start_stack(session=session_factory(Speaker, tts))
    try:
        call = await SimulatedUser(stack.sandbox, "15551110009", "Ana").place_call()
        # A phone sends its room from the start; the cough comes mid-prompt.
        sound = room_noise(6.0)
        sound[3 * 16000 : 3 * 16000 + 150 * 16] += cough()
        call.play(sound)
        async with asyncio.timeout(len(prompt) / 16000 + 10):
            while not Speaker.results:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)

        (result,) = Speaker.results
        assert not result.interrupted
        assert result.frames_played == result.frames_total
        assert Speaker.interruptions == [] and Speaker.utterances == []
        session = stack.gateway.calls.get(call.call_id).session
        assert isinstance(session, BotSession)
        assert session.metrics.barge_ins == 0
        assert session.metrics.false_interruptions == len(result.pauses) >= 1
        played_before, paused = result.pauses[-1]
        print(f"cough: prompt paused after {played_before * 20} ms for {paused * 20} ms")
        # It paused, and resumed well before the segmenter's 700 ms hangover ran out.
        assert 0 < paused < 700 // 20

        # The whole prompt was sent, and the caller heard it as it was sent: what came
        # before the pause, the pause, then the rest (on a loaded machine, with gaps
        # where the playout skipped after a stall).
        sent = Speaker.sent
        assert sent is not None
        heard = await sent.heard(call)
        said, heard_as_sent = sent.compare(heard, prompt)
        print(f"envelope correlation: said {said:.2f}, heard as sent {heard_as_sent:.2f}")
        assert said > 0.9 and heard_as_sent > 0.95, (said, heard_as_sent)
        pauses = sum(length for _, length in result.pauses)
        assert pauses <= sent.gaps <= pauses + sent.skipped
        assert loud_frames(heard) >= 0.9 * loud_frames(prompt)
        await call.hang_up()
    finally:
        await stop_stack(stack)


class StrictSpeaker(Speaker):
    """Says the prompt with false-interruption resuming off: any sound that starts a turn cuts."""

    async def on_start(self, call: CallControl) -> None:
        call.listen(resume_false_interruptions=False)
        await super().on_start(call)


async def test_with_resuming_off_a_cough_cuts_the_prompt() -> None:
    Speaker.results, Speaker.interruptions, Speaker.utterances = [], [], []
    tts = default_tts()
    stack = await start_stack(session=session_factory(StrictSpeaker, tts))
    try:
        call = await SimulatedUser(stack.sandbox, "15551110010", "Bo").place_call()
        sound = room_noise(5.0)
        sound[3 * 16000 : 3 * 16000 + 150 * 16] += cough()
        call.play(sound)
        async with asyncio.timeout(20):
            while not Speaker.results:
                await asyncio.sleep(0.05)
        (result,) = Speaker.results
        assert result.interrupted and result.frames_played < result.frames_total
        assert result.pauses == ()
        await asyncio.sleep(0.2)
        (cut,) = Speaker.interruptions
        assert cut.label == PROMPT and cut.played_ms == result.played_ms
        await call.hang_up()
    finally:
        await stop_stack(stack)
