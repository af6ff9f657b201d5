"""VAD turn-taking on the recorded speech in shared/audio."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.errors import ConfigError, GatewayError
from gateway.media.audio import load_wav
from gateway.pipeline.vad import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SpeechDiscarded,
    SpeechEnded,
    SpeechStarted,
    VadConfig,
    VadEvent,
    VadSegmenter,
)

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
SPEECH_FILES = [
    "cards-001",
    "cards-002",
    "cards-003",
    "cards-004",
    "cards-005",
    "goforward",
    "numbers",
    "forever-2",
]

PCM = NDArray[np.int16]


def _load(name: str) -> PCM:
    return load_wav(AUDIO / f"{name}.wav")


def _frames(pcm: PCM) -> NDArray[np.int16]:
    # Whole frames only: a zero-padded last frame is a click the VAD may flag.
    n = len(pcm) // FRAME_SAMPLES
    return pcm[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)


def _run(pcm: PCM, config: VadConfig | None = None) -> list[VadEvent]:
    seg = VadSegmenter(config)
    events: list[VadEvent] = []
    for frame in _frames(pcm):
        events.extend(seg.push(frame))
    events.extend(seg.flush())
    return events


def _ended(events: list[VadEvent]) -> list[SpeechEnded]:
    return [e for e in events if isinstance(e, SpeechEnded)]


def _energy_span(pcm: PCM) -> tuple[int, int]:
    """First and last ms of the frames 10 dB over the file's noise floor."""
    power = np.mean(_frames(pcm).astype(np.float64) ** 2, axis=1)
    db = 10 * np.log10(power + 1.0)
    loud = np.flatnonzero(db > np.percentile(db, 10) + 10)
    return int(loud[0]) * FRAME_MS, (int(loud[-1]) + 1) * FRAME_MS


def _trimmed(name: str) -> PCM:
    pcm = _load(name)
    start, end = _energy_span(pcm)
    return pcm[start * 16 : end * 16]


def _background_noise(pcm: PCM, seconds: float, seed: int) -> PCM:
    """Stationary noise with the spectrum and level of the file's first 160 ms."""
    quiet = pcm[: 160 * 16].astype(np.float64)
    win = 512
    segs = np.stack(
        [quiet[i : i + win] * np.hanning(win) for i in range(0, len(quiet) - win + 1, win // 4)]
    )
    shape = np.sqrt(np.mean(np.abs(np.fft.rfft(segs, axis=1)) ** 2, axis=0))
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).normal(size=n))
    gain = np.interp(np.linspace(0, 1, len(spectrum)), np.linspace(0, 1, len(shape)), shape)
    noise = np.fft.irfft(spectrum * gain, n=n)
    noise *= np.std(quiet) / np.std(noise)
    return np.clip(noise, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("name", SPEECH_FILES)
def test_each_recording_is_one_turn_matching_its_energy(name: str) -> None:
    pcm = _load(name)
    events = _run(pcm)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert ended.started_at_ms == started.at_ms

    span_start, span_end = _energy_span(pcm)
    # Not late (speech would be lost) and not far early (the VAD may take room noise
    # right before speech for speech, never whole seconds of it).
    assert span_start - 200 <= ended.started_at_ms <= span_start + 60
    assert span_end - 250 <= ended.at_ms <= span_end + 300
    cfg = VadConfig()
    assert ended.started_at_ms - cfg.pre_roll_ms <= span_start
    assert ended.at_ms + cfg.post_roll_ms >= span_end


@pytest.mark.parametrize("name", SPEECH_FILES)
def test_utterance_pcm_is_the_source_audio_with_pre_and_post_roll(name: str) -> None:
    pcm = _load(name)
    cfg = VadConfig()
    (ended,) = _ended(_run(pcm, cfg))
    first = max(ended.started_at_ms - cfg.pre_roll_ms, 0) * 16
    last = min(ended.at_ms + cfg.post_roll_ms, len(_frames(pcm)) * FRAME_MS) * 16
    np.testing.assert_array_equal(ended.pcm, pcm[first:last])


def test_long_sentence_with_several_words_is_one_utterance() -> None:
    events = _run(_load("cards-005"))  # "eight of spades four of clubs seven of hearts"
    (ended,) = _ended(events)
    assert ended.at_ms - ended.started_at_ms > 2800


@pytest.mark.parametrize(("gap_ms", "turns"), [(1000, 2), (300, 1)])
def test_two_sentences_split_only_on_a_long_pause(gap_ms: int, turns: int) -> None:
    gap = np.zeros(gap_ms * 16, np.int16)
    for a, b in itertools.permutations(SPEECH_FILES, 2):
        first, second = _trimmed(a), _trimmed(b)
        ended = _ended(_run(np.concatenate([first, gap, second])))
        assert len(ended) == turns, f"{a} + {gap_ms} ms + {b}: {len(ended)} turns"
        if turns == 2:
            first_ms = len(first) // 16
            assert ended[0].at_ms <= first_ms + 100
            assert ended[1].started_at_ms >= first_ms + gap_ms - 100


@pytest.mark.parametrize("seed", range(len(SPEECH_FILES)))
def test_background_noise_alone_never_starts_a_turn(seed: int) -> None:
    # The VAD flags the first 4-5 frames of any new noise as speech; that must not
    # become a start, or every call would barge in on its own greeting.
    noise = _background_noise(_load(SPEECH_FILES[seed]), 5.0, seed)
    assert _run(noise) == []


def test_a_short_burst_starts_then_is_discarded() -> None:
    speech = _load("cards-005")
    pcm = _background_noise(speech, 3.0, 0)
    pcm[16000 : 16000 + 80 * 16] += speech[220 * 16 : 300 * 16]  # 80 ms of "eight"
    events = _run(pcm)
    assert [type(e) for e in events] == [SpeechStarted, SpeechDiscarded]


def test_max_utterance_forces_turns_closed() -> None:
    cfg = VadConfig(max_utterance_ms=1000)
    ended = _ended(_run(_load("cards-005"), cfg))
    assert len(ended) >= 3
    assert all(len(e.pcm) <= 1000 * 16 for e in ended)
    assert all(a.at_ms <= b.started_at_ms for a, b in itertools.pairwise(ended))


def test_in_speech_and_reset() -> None:
    pcm = _load("cards-001")
    seg = VadSegmenter()
    rows = _frames(pcm)
    states = []
    for frame in rows[:30]:
        seg.push(frame)
        states.append(seg.in_speech)
    assert not states[0] and states[-1]
    seg.reset()
    assert not seg.in_speech and seg.frames_seen == 0
    assert seg.flush() == []
    # Times restart at 0 and nothing of the dropped turn leaks into the next.
    events = [e for frame in rows for e in seg.push(frame)] + seg.flush()
    assert [(type(e), e.at_ms) for e in events] == [(type(e), e.at_ms) for e in _run(pcm)]


def test_non_contiguous_frames_are_accepted() -> None:
    pcm = _load("cards-001")
    doubled = np.repeat(pcm, 2)[::2]  # same samples, strided view
    assert not doubled[:FRAME_SAMPLES].flags.c_contiguous
    seg = VadSegmenter()
    events: list[VadEvent] = []
    for i in range(len(pcm) // FRAME_SAMPLES):
        events.extend(seg.push(doubled[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]))
    events.extend(seg.flush())
    assert [e.at_ms for e in events] == [e.at_ms for e in _run(pcm)]


@pytest.mark.parametrize(
    "frame",
    [np.zeros(160, np.int16), np.zeros(320, np.float32), np.zeros((2, 320), np.int16)],
)
def test_wrong_frames_are_refused(frame: np.ndarray) -> None:
    with pytest.raises(GatewayError, match="320 int16 samples"):
        VadSegmenter().push(frame)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aggressiveness": 4},
        {"start_voiced_frames": 9},
        {"hangover_ms": 0},
        {"pre_roll_ms": -20},
        {"min_utterance_ms": 5000, "max_utterance_ms": 1000},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        VadConfig(**kwargs)


def _babble(n: int) -> NDArray[np.float64]:
    """Other voices: three recordings, each looped from its own offset, summed."""
    out = np.zeros(n)
    for k, name in enumerate(["goforward", "numbers", "forever-2"]):
        voice = _load(name).astype(np.float64)
        out += np.tile(voice, n // len(voice) + 2)[k * 7919 : k * 7919 + n]
    return out


@pytest.mark.parametrize("snr_db", [20, 10])
def test_voice_gate_closes_turns_over_background_voices(snr_db: int) -> None:
    pause = np.zeros(2500 * 16)
    first, second = _trimmed("cards-001"), _trimmed("cards-003")
    caller = np.concatenate([np.zeros(1500 * 16), first, pause, second, pause])
    spans = [(1500, 1500 + len(first) // 16)]
    spans.append((spans[0][1] + 2500, spans[0][1] + 2500 + len(second) // 16))
    speech_power = np.mean(np.concatenate([first, second]).astype(np.float64) ** 2)
    babble = _babble(len(caller))
    babble *= np.sqrt(speech_power / np.mean(babble**2) / 10 ** (snr_db / 10))
    mix = np.clip(caller + babble, -32768, 32767).astype(np.int16)

    # WebRTC's VAD calls the other voices speech: one turn from the start, cut by
    # the end of the stream, instead of two.
    assert len(_ended(_run(mix, VadConfig(level_gate=False, voice_gate=False)))) < 2
    ended = _ended(_run(mix, VadConfig(voice_gate=True)))
    assert len(ended) == 2
    for e, (start, end) in zip(ended, spans, strict=True):
        assert abs(e.started_at_ms - start) <= 300 and abs(e.at_ms - end) <= 300


def test_voice_gate_never_starts_on_background_voices_alone() -> None:
    babble = _babble(30 * SAMPLE_RATE)
    level = np.mean(_trimmed("cards-001").astype(np.float64) ** 2)
    babble *= np.sqrt(level / np.mean(babble**2) / 10)  # 10 dB below a caller
    pcm = np.clip(babble, -32768, 32767).astype(np.int16)
    assert _run(pcm, VadConfig(voice_gate=True)) == []


@pytest.mark.parametrize("voice_gate", [False, True])
def test_step_then_events_is_push_and_only_actions_change_in_speech(voice_gate: bool) -> None:
    """The session calls the compiled step and the events apart (VadSegmenter.step):
    the same events as push(), a new step after reset(), and in_speech never changes
    at a frame whose action is 0 (the session checks it only at actions)."""
    pcm = np.concatenate([_load("cards-001"), np.zeros(SAMPLE_RATE, np.int16), _load("numbers")])
    cfg = VadConfig(voice_gate=voice_gate)
    whole, apart = VadSegmenter(cfg), VadSegmenter(cfg)
    for round_ in range(2):
        got: list[VadEvent] = []
        want: list[VadEvent] = []
        actions = 0
        for frame in _frames(pcm):
            want.extend(whole.push(frame))
            before = apart.in_speech
            action = apart.step(frame)
            actions += bool(action)
            if not action:
                assert apart.in_speech == before
            got.extend(apart.events(action, frame))
        got.extend(apart.flush())
        want.extend(whole.flush())
        assert actions and [(type(e), e.at_ms) for e in got] == [(type(e), e.at_ms) for e in want]
        assert [e.pcm.tobytes() for e in _ended(got)] == [e.pcm.tobytes() for e in _ended(want)]
        stale = apart.step
        whole.reset()
        apart.reset()
        assert apart.step.__self__ is not stale.__self__  # type: ignore[attr-defined]  # a new core
        assert round_ < 1 or not apart.in_speech


def test_a_step_refuses_a_wrong_frame_with_a_value_error_the_segmenter_explains() -> None:
    seg = VadSegmenter()
    frame = np.zeros(160, np.int16)
    with pytest.raises(ValueError):
        seg.step(frame)
    error = seg.frame_error(frame)
    assert isinstance(error, GatewayError) and "320 int16 samples" in str(error)
