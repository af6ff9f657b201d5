"""The compiled frame listener (gateway/pipeline/_vadstep.c FrameListener) a bot session
registers with its call: the VAD step in C, Python only at the step's actions.

Frame by frame on recordings it calls ``on_step`` exactly at the frames whose action
is not 0 and the segmenter's events are push()'s; while not ``plain`` (or for a
frame that is not one) every frame goes to ``on_frame`` instead; it follows the
segmenter's reset; it equals the Python listener it stands for. A session keeps it
plain only while nothing needs every frame.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from numpy.typing import NDArray

from bots.echo import EchoBot
from gateway.calls import Call
from gateway.events import Direction
from gateway.media.audio import load_wav
from gateway.media.playout import Playback
from gateway.pipeline import _vadstep
from gateway.pipeline.session import BotSession
from gateway.pipeline.stall import stall_watch
from gateway.pipeline.tts import TTS
from gateway.pipeline.vad import FRAME_SAMPLES, SAMPLE_RATE, VadConfig, VadEvent, VadSegmenter
from gateway.records import CallRecord

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"


def _frames() -> NDArray[np.int16]:
    speech, pause = load_wav(AUDIO / "cards-001.wav"), np.zeros(SAMPLE_RATE, np.int16)
    pcm = np.concatenate([speech, pause, load_wav(AUDIO / "numbers.wav")])
    n = len(pcm) // FRAME_SAMPLES
    return pcm[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)


def _never(frame: object) -> None:
    raise AssertionError("on_frame called while plain")


@pytest.mark.parametrize("voice_gate", [False, True])  # True: learning the room (LEARN)
def test_python_runs_only_at_the_steps_actions_with_pushs_events(voice_gate: bool) -> None:
    cfg = VadConfig(voice_gate=voice_gate)
    reference, listened = VadSegmenter(cfg), VadSegmenter(cfg)
    want: list[VadEvent] = []
    actions: list[tuple[int, int]] = []
    for index, frame in enumerate(_frames()):
        action = reference.step(frame)
        if action:
            actions.append((index, action))
        want += reference.events(action, frame)

    got: list[VadEvent] = []
    steps: list[tuple[int, int]] = []

    def on_step(action: int, frame: Any) -> None:
        steps.append((listened.frames_seen - 1, action))
        got.extend(listened.events(action, frame))

    listener = listened.frame_listener(on_step, _never)
    assert listener is not None
    listener.plain = True
    for frame in _frames():
        listener(frame)
    assert steps == actions and len(actions) >= 2
    assert [(type(e), e.at_ms) for e in got] == [(type(e), e.at_ms) for e in want]
    assert listened.frames_seen == reference.frames_seen


def test_while_not_plain_or_for_what_is_no_frame_on_frame_gets_it() -> None:
    segmenter = VadSegmenter()
    seen: list[object] = []
    listener = segmenter.frame_listener(lambda action, frame: None, seen.append)
    assert listener is not None and not listener.plain  # plain only when told
    frames = list(_frames()[:3])
    for frame in frames:
        listener(frame)
    assert [id(f) for f in seen] == [id(f) for f in frames] and segmenter.frames_seen == 0
    listener.plain = True
    short = np.zeros(160, np.int16)
    listener(short)  # the session's _on_frame explains it (a GatewayError)
    assert seen[-1] is short and segmenter.frames_seen == 0
    listener(frames[0])
    assert segmenter.frames_seen == 1 and len(seen) == 4


def test_the_listener_follows_the_segmenters_reset() -> None:
    segmenter = VadSegmenter()
    listener = segmenter.frame_listener(lambda action, frame: None, _never)
    assert listener is not None
    assert segmenter.frame_listener(lambda action, frame: None, _never) is listener  # one
    listener.plain = True
    for frame in _frames()[:10]:
        listener(frame)
    old = listener.core
    segmenter.reset()
    assert listener.core is not old and segmenter.frames_seen == 0
    listener(_frames()[0])
    assert segmenter.frames_seen == 1 and old.index == 10


def test_the_listener_equals_the_python_listener_it_stands_for() -> None:
    def on_frame(frame: object) -> None:
        pass

    listener = VadSegmenter().frame_listener(lambda action, frame: None, on_frame)
    assert listener is not None
    assert listener == on_frame and on_frame == listener and hash(listener) == hash(on_frame)
    assert listener in (on_frame,) and on_frame in (listener,)
    assert listener != _never and listener != VadSegmenter().frame_listener(print, _never)


def test_bad_arguments_are_refused() -> None:
    core = VadSegmenter()._core
    with pytest.raises(TypeError):
        _vadstep.FrameListener(object(), print, print)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _vadstep.FrameListener(core, None, print)  # type: ignore[arg-type]
    listener = _vadstep.FrameListener(core, print, print)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        listener.core = object()  # type: ignore[assignment]
    with pytest.raises(TypeError):
        listener(1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):  # never initialised: not callable
        _vadstep.FrameListener.__new__(_vadstep.FrameListener)(np.zeros(320, np.int16))


class _PausingBot(EchoBot):
    async def on_pause(self, call: object, utterance: object) -> None:
        pass


def _session(bot: EchoBot) -> BotSession:
    call = Call(CallRecord("wacid.listener", Direction.USER_INITIATED, "1555"), graph=None)  # type: ignore[arg-type]
    return BotSession(call, bot, cast(TTS, None))


async def test_a_session_keeps_its_listener_plain_only_while_nothing_needs_every_frame() -> None:
    session = _session(EchoBot())
    listener = session._listener
    assert listener is not None and listener.plain
    assert listener == session._on_frame
    watch = stall_watch(asyncio.get_running_loop())
    for frame in _frames()[:60]:
        listener(frame)  # as the media path calls it
    assert session._segmenter.in_speech and watch.watched == 1  # the turn is watched
    playback = Playback(1)
    session._barge.held = playback
    assert not listener.plain
    session._barge.held = None
    assert listener.plain
    session.listen(enabled=False)
    assert not listener.plain and listener.core is session._segmenter._core
    assert watch.watched == 0
    session.listen()
    assert listener.plain
    assert not _session(_PausingBot())._listener.plain  # type: ignore[union-attr]  # pauses
