"""Bots on real calls: the echo bot, barge-in, hang-up, and a bot that breaks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from gateway.calls import CallState
from gateway.media.audio import frame_rms, load_wav
from gateway.pipeline.bot import BaseBot, CallControl, Interruption, Utterance
from gateway.pipeline.plugins import default_tts, session_for
from gateway.pipeline.session import BotSession, session_factory
from gateway.sandbox.user import SimulatedUser, UserCall

from .audio_checks import SentSpeech, loud_frames
from .conftest import AUDIO, Stack, start_stack, stop_stack


async def _call(stack: Stack, wa_id: str = "15551110001") -> UserCall:
    call = await SimulatedUser(stack.sandbox, wa_id, "Ana").place_call()
    async with asyncio.timeout(15):
        await call.accepted.wait()
        await call.media_up.wait()
    await asyncio.sleep(0.2)
    return call


@pytest.fixture
async def echo_stack() -> AsyncIterator[Stack]:
    s = await start_stack(session=session_for("echo"))
    try:
        yield s
    finally:
        await stop_stack(s)


async def test_echo_bot_plays_the_utterance_back(echo_stack: Stack) -> None:
    call = await _call(echo_stack)
    sent = SentSpeech(echo_stack.gateway.calls.get(call.call_id).playout)
    speech = load_wav(AUDIO / "cards-005.wav")
    await call.play(speech).wait()
    heard = await sent.heard(call)  # the reply, after the VAD hangover
    # The bot said the caller's words back, and the caller heard them as they were sent
    # (on a loaded machine, with gaps where the playout skipped after a stall).
    said, heard_as_sent = sent.compare(heard, speech)
    assert said > 0.85 and heard_as_sent > 0.95, (said, heard_as_sent)
    assert sent.gaps <= sent.skipped
    assert loud_frames(heard) >= loud_frames(speech) * 0.8
    session = echo_stack.gateway.calls.get(call.call_id).session
    assert isinstance(session, BotSession)
    assert session.metrics.utterances == 1  # cards-005 is one turn
    assert len(session.metrics.response_latencies_ms) == 1
    await call.hang_up()


async def test_echo_bot_hangs_up_on_hash(echo_stack: Stack) -> None:
    call = await _call(echo_stack)
    await call.press("#")
    async with asyncio.timeout(10):
        await call.ended.wait()
    assert call.end_reason == "hung up by the business"
    assert loud_frames(call.heard) > 10  # "Goodbye." was said before hanging up
    actions = [a.action for a in echo_stack.sandbox.actions(call.call_id)]
    assert actions == ["pre_accept", "accept", "terminate"]
    record = echo_stack.gateway.calls.history[call.call_id]
    assert record.end_reason == "caller pressed #"


class NumpyEcho(BaseBot):
    """A plugin written against the numpy API: reads ``Utterance.pcm``, plays an ndarray."""

    seen: list[tuple[np.ndarray, bytes]] = []

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        pcm = utterance.pcm
        NumpyEcho.seen.append((pcm, bytes(utterance.audio)))
        await call.play(pcm.astype(np.float32) * 0.5, label="numpy echo")  # converted, as ever


async def test_a_bot_reading_utterance_pcm_gets_int16_samples_on_a_real_call() -> None:
    NumpyEcho.seen = []
    stack = await start_stack(session=session_factory(NumpyEcho, default_tts()))
    try:
        call = await _call(stack)
        sent = SentSpeech(stack.gateway.calls.get(call.call_id).playout)
        speech = load_wav(AUDIO / "cards-005.wav")
        await call.play(speech).wait()
        heard = await sent.heard(call)
        assert len(NumpyEcho.seen) == 1
        pcm, raw = NumpyEcho.seen[0]
        assert isinstance(pcm, np.ndarray) and pcm.dtype == np.int16 and pcm.ndim == 1
        assert pcm.tobytes() == raw and len(pcm) > 16000  # the utterance's own samples
        # The float array the bot made was played, and heard.
        said, heard_as_sent = sent.compare(heard, (speech // 2).astype(np.int16))
        assert said > 0.85 and heard_as_sent > 0.95, (said, heard_as_sent)
        await call.hang_up()
    finally:
        await stop_stack(stack)


class Lecturer(BaseBot):
    """Talks for a long time; records what barge-in cut."""

    text = (
        "Thank you for calling. Please listen carefully, as our menu options have changed. "
        "Our opening hours are Monday to Friday from nine in the morning to five in the "
        "afternoon, and on Saturdays from ten to two. We are closed on public holidays."
    )
    interruptions: list[Interruption] = []
    utterances: list[Utterance] = []

    async def on_start(self, call: CallControl) -> None:
        result = await call.say(self.text)
        assert result.interrupted

    async def on_barge_in(self, call: CallControl, interruption: Interruption) -> None:
        Lecturer.interruptions.append(interruption)

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        Lecturer.utterances.append(utterance)


async def test_barge_in_stops_playout_at_once() -> None:
    Lecturer.interruptions, Lecturer.utterances = [], []
    stack = await start_stack(session=session_factory(Lecturer, default_tts()))
    try:
        call = await _call(stack)
        async with asyncio.timeout(10):
            while call.first_heard_at is None:
                await asyncio.sleep(0.02)
        await asyncio.sleep(1.5)  # the bot is mid-sentence
        speech = load_wav(AUDIO / "goforward.wav")
        # Counted in frames, not wall time: how many of the prompt's frames the gateway
        # sent after the first loud frame of the caller's words reached it.
        gw_call = stack.gateway.calls.get(call.call_id)
        sent = SentSpeech(gw_call.playout)
        sent_at_onset: list[int] = []

        def onset(frame: object) -> None:
            pcm = np.frombuffer(frame, np.int16)  # type: ignore[call-overload]
            if not sent_at_onset and frame_rms(pcm)[0] > 500:
                sent_at_onset.append(len(sent.packets))

        gw_call.add_frame_listener(onset)
        # For the log: from where the words start in the recording, not its lead-in.
        lead_in = int(np.argmax(frame_rms(speech) > 500)) * 0.020
        playback = call.play(speech)
        onset_at = time.monotonic() + lead_in
        await asyncio.sleep(1.0)
        gw_call.remove_frame_listener(onset)
        sent.close()
        assert call.last_heard_at is not None and sent_at_onset
        after_onset = len(sent.packets) - sent_at_onset[0]
        print(
            f"barge-in: {after_onset} prompt frames sent after the words' first loud frame "
            f"came in; speech onset -> last bot frame heard: "
            f"{(call.last_heard_at - onset_at) * 1000:.0f} ms"
        )
        # Detection needs 6 voiced frames of 8 (the VAD's start window), then the playout
        # stops within a frame; after a stall of the shared process a tick may catch up
        # with 3 frames. The prompt had many seconds left.
        assert after_onset <= 8 + 1 + 3
        await playback.wait()
        await asyncio.sleep(1.2)
        assert len(Lecturer.interruptions) == 1
        cut = Lecturer.interruptions[0]
        assert cut.label == Lecturer.text and cut.frames_dropped > 100
        assert len(Lecturer.utterances) == 1  # the caller's words still reach the bot
        await call.hang_up()
    finally:
        await stop_stack(stack)


class Broken(BaseBot):
    async def on_start(self, call: CallControl) -> None:
        raise RuntimeError("bot bug")


async def test_a_broken_bot_ends_only_its_own_call() -> None:
    broken_id = "wacid.broken"
    good_factory = session_for("echo")
    broken_factory = session_factory(Broken, default_tts())

    async def pick(call: object) -> None:
        # The call placed as broken_id gets the broken bot, the other a working echo.
        # (The exact id: the sandbox's random ids end in any character, "x" too.)
        factory = broken_factory if getattr(call, "id", "") == broken_id else good_factory
        await factory(call)  # type: ignore[arg-type]

    stack = await start_stack(session=pick)  # type: ignore[arg-type]
    try:
        good = await _call(stack, "15551110002")
        stack.sandbox.new_call_id = lambda: broken_id  # type: ignore[method-assign]
        bad = await SimulatedUser(stack.sandbox, "15551110003", "Bo").place_call()
        async with asyncio.timeout(10):
            await bad.ended.wait()
        assert [a.action for a in stack.sandbox.actions(broken_id)][-1] == "terminate"
        assert "bot error" in (stack.gateway.calls.history[broken_id].end_reason or "")
        assert stack.gateway.calls.get(good.call_id).state is CallState.ACTIVE
        sent = SentSpeech(stack.gateway.calls.get(good.call_id).playout)
        speech = load_wav(AUDIO / "cards-001.wav")
        await good.play(speech).wait()
        said, heard_as_sent = sent.compare(await sent.heard(good), speech)  # the echo
        assert said > 0.8 and heard_as_sent > 0.95, (said, heard_as_sent)
        await good.hang_up()
    finally:
        await stop_stack(stack)


def test_unknown_bot_lists_the_available_ones() -> None:
    from gateway.errors import BotError

    with pytest.raises(BotError, match=r"available: .*echo"):
        session_for("no-such-bot")


def test_bundled_bots_are_the_ones_pyproject_registers() -> None:
    # load_bot() takes the project's own bots from BUNDLED_BOTS without an entry-point
    # scan: the two lists must not drift apart, and each loads the registered object.
    import tomllib
    from importlib.metadata import entry_points
    from pathlib import Path

    from gateway.pipeline.plugins import BUNDLED_BOTS, load_bot

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert dict(BUNDLED_BOTS) == pyproject["project"]["entry-points"]["gateway.bots"]
    installed = {ep.name: ep for ep in entry_points(group="gateway.bots")}
    for name in BUNDLED_BOTS:
        assert load_bot(name) is installed[name].load()


def test_silence_stays_quiet() -> None:
    assert loud_frames(np.zeros(16000, np.int16)) == 0


async def test_the_bot_session_takes_frames_straight_from_the_media_path(
    echo_stack: Stack,
) -> None:
    call = await _call(echo_stack, "15551110009")
    gw_call = echo_stack.gateway.calls.get(call.call_id)
    session = gw_call.session
    assert gw_call.inbound is not None and session is not None
    # The session is the lone listener: the media path calls it, with no fan-out between.
    assert gw_call.frame_listeners == (session._on_frame,)
    assert gw_call.inbound.on_frame == session._on_frame

    seen: list[object] = []
    gw_call.add_frame_listener(seen.append)
    assert gw_call.inbound.on_frame == gw_call._on_frame  # two: the call fans out
    before = session._segmenter.frames_seen
    await call.play(load_wav(AUDIO / "cards-001.wav")[:16000]).wait()
    await asyncio.sleep(0.2)
    assert len(seen) >= 40
    assert session._segmenter.frames_seen - before >= len(seen) - 1  # both got every frame

    gw_call.remove_frame_listener(seen.append)
    assert gw_call.inbound.on_frame == session._on_frame
    count, before = len(seen), session._segmenter.frames_seen
    await call.play(load_wav(AUDIO / "cards-002.wav")[:8000]).wait()
    await asyncio.sleep(0.2)
    assert len(seen) == count and session._segmenter.frames_seen > before
    await call.hang_up()
    await asyncio.wait_for(gw_call.ended.wait(), 5)
    assert gw_call.frame_listeners == ()
