"""The VAD's compiled core (steady state in gateway/pipeline/_vadstep.c) against the Python core.

The segmenter's state machine runs per frame in C (gates, start window, appending to
the open turn, hangover) and in Python only when a turn opens or closes or while the
room is learned. Its Python fallback (:class:`PythonCore`) must give the same turns to
the bit: both cores run side by side over the recordings and a noisy room in several
configurations, and after every frame their whole state (doubles compared exactly)
and the events (times and audio) must be equal. Bad input is refused with ValueError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import webrtcvad
from numpy.typing import NDArray

from gateway.errors import GatewayError
from gateway.media.audio import load_wav
from gateway.pipeline._vadstep import VadStep
from gateway.pipeline.vad import FRAME_SAMPLES, SpeechEnded, VadConfig, VadSegmenter
from gateway.pipeline.vad.compiled import make_core
from gateway.pipeline.vad.core import LEVEL_VARIANCE, Core
from gateway.pipeline.vad.fallback import PythonCore
from gateway.pipeline.vad.webrtc import process_address

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
STATE = "index window loud start_frame last_voiced filled floor room prev_loud learning".split()
CONFIGS = {
    "webrtc only": VadConfig(level_gate=False, voice_gate=False),
    "level gate": VadConfig(voice_gate=False),
    "voice gate": VadConfig(),
    "short turns": VadConfig(
        aggressiveness=3,
        hangover_ms=300,
        max_utterance_ms=1500,
        start_window_frames=5,
        start_voiced_frames=3,
        pre_roll_ms=100,
    ),
    "64-frame window": VadConfig(start_window_frames=64, start_voiced_frames=40),
}


def _room() -> NDArray[np.int16]:
    """A caller over another voice and pink noise, then the background alone."""
    caller = np.concatenate([load_wav(AUDIO / f"cards-00{i}.wav") for i in (1, 2, 3)])
    other = np.resize(load_wav(AUDIO / "numbers.wav"), len(caller) + 10 * 16000)
    rng = np.random.default_rng(14)
    pink = np.cumsum(rng.normal(0, 1, len(other))) * 0.02
    pink -= np.convolve(pink, np.ones(400) / 400, mode="same")  # no drift to the rails
    mix = other * 0.2 + pink * 300
    mix[: len(caller)] += caller
    return np.clip(np.round(mix), -32768, 32767).astype(np.int16)


def _state(core: Core) -> tuple[object, ...]:
    return tuple(getattr(core, name) for name in STATE)


def _same_events(a: list[object], b: list[object]) -> None:
    assert [type(e) for e in a] == [type(e) for e in b]
    for x, y in zip(a, b, strict=True):
        assert (x.at_ms, getattr(x, "started_at_ms", None)) == (  # type: ignore[attr-defined]
            y.at_ms,  # type: ignore[attr-defined]
            getattr(y, "started_at_ms", None),
        )
        if isinstance(x, SpeechEnded):
            assert isinstance(y, SpeechEnded) and np.array_equal(x.pcm, y.pcm)


def test_the_compiled_core_is_built() -> None:
    assert isinstance(VadSegmenter()._core, VadStep)
    assert isinstance(VadSegmenter(native=False)._core, PythonCore)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("name", ["goforward", "forever-2", "room"])
def test_cores_agree_frame_by_frame(name: str, config: VadConfig) -> None:
    pcm = _room() if name == "room" else load_wav(AUDIO / f"{name}.wav")
    frames = pcm[: len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    native, python = VadSegmenter(config), VadSegmenter(config, native=False)
    fallback = VadSegmenter(config, native=False)  # its own float32 levels too
    # The state machines compared on the same levels: the Python step's float32 sum of
    # squares differs from the C step's exact one in the last bits (test_vad_step.py).
    core = python._core
    assert isinstance(core, PythonCore)
    core.step = VadStep(python._ring, process_address(), python._vad._vad, python._level).step
    events = 0
    for index, frame in enumerate(frames):
        got, want = native.push(frame), python.push(frame)
        _same_events(got, want)
        _same_events(got, fallback.push(frame))
        events += len(got)
        assert _state(native._core) == _state(python._core), index
        assert (native.in_speech, native.turn_silence_ms, native.turn_voiced_ms) == (
            python.in_speech,
            python.turn_silence_ms,
            python.turn_voiced_ms,
        ), index
        if index % 11 == 0:
            a, b = native.peek(), python.peek()
            _same_events([a] if a else [], [b] if b else [])
    last = python.flush()
    _same_events(native.flush(), last)
    _same_events(fallback.flush(), last)
    assert events > 0  # turns opened and closed: the compared paths ran


@pytest.mark.parametrize("native", [True, False])
def test_a_bad_frame_is_refused_and_changes_nothing(native: bool) -> None:
    segmenter = VadSegmenter(VadConfig(voice_gate=False), native=native)
    segmenter.push(np.zeros(FRAME_SAMPLES, np.int16))
    before = _state(segmenter._core)
    for frame in (np.zeros(FRAME_SAMPLES - 1, np.int16), np.zeros(FRAME_SAMPLES, np.float32)):
        with pytest.raises(GatewayError, match="320 int16 samples"):
            segmenter.push(frame)
        with pytest.raises(ValueError):
            segmenter._core.push(frame)
    assert _state(segmenter._core) == before


def _core(native: bool, grow: object = None, **overrides: object) -> Core:
    settings: dict[str, object] = dict(
        window_frames=8,
        start_voiced=6,
        hangover=35,
        max_frames=1000,
        gated=True,
        voice=True,
        voice_margin=5.0,
        floor_margin=10.0,
        learning=False,
        grow=grow or (lambda end: None),
    )
    settings.update(overrides)
    ring = np.zeros((12, FRAME_SAMPLES), np.int16)
    return make_core(ring, webrtcvad.Vad(2), LEVEL_VARIANCE, native=native, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    "overrides",
    [
        {"window_frames": 0, "start_voiced": 0},
        {"window_frames": 65},
        {"start_voiced": 9},
        {"start_voiced": 0},
        {"hangover": 0},
        {"max_frames": 0},
    ],
)
def test_bad_settings_are_refused(native: bool, overrides: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        _core(native, **overrides)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    "buffer",
    [bytes(640), np.zeros(320, np.float32), np.zeros(320, np.int32), [0] * 320, None],
    ids=["read-only", "float32", "int32", "list", "None"],
)
def test_a_bad_utterance_buffer_is_refused(native: bool, buffer: object) -> None:
    with pytest.raises(ValueError, match="int16"):
        _core(native).set_buffer(buffer)


def test_the_compiled_core_must_be_configured() -> None:
    step = VadStep(
        np.zeros((4, FRAME_SAMPLES), np.int16), process_address(), webrtcvad.Vad(2)._vad, 1
    )
    frame = np.zeros(FRAME_SAMPLES, np.int16)
    with pytest.raises(RuntimeError, match="configured"):
        step.push(frame)
    with pytest.raises(RuntimeError, match="configured"):
        step.advance(0, True, 10.0)
    with pytest.raises(RuntimeError, match="configured"):
        step.gate(10.0, True)
    core = _core(True)
    with pytest.raises(TypeError):
        core.advance(0, True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="negative"):
        core.advance(-1, True, 10.0)


def _open_turn(core: Core) -> None:
    """Put ``core`` in an open turn, as VadSegmenter._open leaves it."""
    core.start_frame = 0
    core.last_voiced = 0
    core.index = 1


@pytest.mark.parametrize("native", [True, False])
def test_the_open_turn_grows_its_buffer_through_python(native: bool) -> None:
    grown: list[int] = []

    def grow(end: int) -> None:
        grown.append(end)
        buffer = np.zeros(2 * end, np.int16)
        buffers.append(buffer)
        core.set_buffer(buffer)

    buffers: list[NDArray[np.int16]] = []
    core = _core(native, grow, gated=False)
    _open_turn(core)
    speech = load_wav(AUDIO / "numbers.wav")[: 3 * FRAME_SAMPLES].reshape(3, FRAME_SAMPLES)
    assert core.push(speech[0]) == 0
    assert grown == [FRAME_SAMPLES] and core.filled == FRAME_SAMPLES
    assert core.push(speech[1]) == 0  # room for two frames: no second growth
    assert grown == [FRAME_SAMPLES]
    assert np.array_equal(buffers[0], speech[:2].reshape(-1))
    core.push(speech[2])
    assert grown == [FRAME_SAMPLES, 3 * FRAME_SAMPLES]


@pytest.mark.parametrize("native", [True, False])
def test_a_grow_that_makes_no_room_is_an_error(native: bool) -> None:
    core = _core(native, gated=False)  # grow() does nothing
    _open_turn(core)
    with pytest.raises(RuntimeError, match="room"):
        core.push(np.zeros(FRAME_SAMPLES, np.int16))

    def failing(end: int) -> None:
        raise MemoryError("no memory for the turn")

    core = _core(native, failing, gated=False)
    _open_turn(core)
    with pytest.raises(MemoryError):
        core.push(np.zeros(FRAME_SAMPLES, np.int16))
