"""Turn-taking in noisy rooms: the caller's recorded speech over other voices or noise.

The mixtures are built as in ``benchmarks/rooms.py`` (shorter): the caller is three
of the cards recordings, each trimmed to its speech and followed by a pause; the
background is the other recordings looped and summed (babble) or pink noise, scaled
so the caller's speech is ``snr_db`` above it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.media.audio import load_wav
from gateway.pipeline.vad import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SpeechEnded,
    SpeechStarted,
    VadConfig,
    VadEvent,
    VadSegmenter,
)

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
CALLER = ["cards-001", "cards-003", "cards-005"]
VOICES = ["goforward", "numbers", "forever-2"]
LEAD_IN_MS = 1500
PAUSE_MS = 2500
TOLERANCE_MS = 300

Spans = list[tuple[int, int]]


def _trimmed(name: str) -> NDArray[np.int16]:
    """The recording cut to its speech: whole frames 10 dB over its noise floor."""
    pcm = load_wav(AUDIO / f"{name}.wav")
    n = len(pcm) // FRAME_SAMPLES
    power = np.mean(pcm[: n * FRAME_SAMPLES].reshape(n, -1).astype(np.float64) ** 2, axis=1)
    db = 10 * np.log10(power + 1.0)
    loud = np.flatnonzero(db > np.percentile(db, 10) + 10)
    return pcm[int(loud[0]) * FRAME_SAMPLES : (int(loud[-1]) + 1) * FRAME_SAMPLES]


def _caller() -> tuple[NDArray[np.float64], Spans, float]:
    """The caller alone, where each utterance is (ms), and the speech's mean power."""
    parts = [np.zeros(LEAD_IN_MS * 16)]
    spans: Spans = []
    at = LEAD_IN_MS
    for name in CALLER:
        utt = _trimmed(name).astype(np.float64)
        spans.append((at, at + len(utt) // 16))
        parts += [utt, np.zeros(PAUSE_MS * 16)]
        at += len(utt) // 16 + PAUSE_MS
    speech = np.concatenate(parts[1::2])
    return np.concatenate(parts), spans, float(np.mean(speech**2))


def _background(kind: str, n: int) -> NDArray[np.float64]:
    if kind == "babble":
        out = np.zeros(n)
        for k, name in enumerate(VOICES):
            voice = load_wav(AUDIO / f"{name}.wav").astype(np.float64)
            out += np.tile(voice, n // len(voice) + 2)[k * 7919 : k * 7919 + n]
        return out
    spectrum = np.fft.rfft(np.random.default_rng(2).normal(size=n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1]
    return np.fft.irfft(spectrum / np.sqrt(f), n=n)  # pink: 1/f power


def _room(kind: str, snr_db: float) -> tuple[NDArray[np.int16], Spans]:
    caller, spans, power = _caller()
    noise = _background(kind, len(caller))
    noise *= np.sqrt(power / np.mean(noise**2) / 10 ** (snr_db / 10))
    return np.clip(np.round(caller + noise), -32768, 32767).astype(np.int16), spans


def _events(pcm: NDArray[np.int16], config: VadConfig) -> list[tuple[int, VadEvent]]:
    """(ms when emitted, event) for every frame pushed."""
    seg = VadSegmenter(config)
    rows = pcm[: len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    return [((i + 1) * FRAME_MS, e) for i, frame in enumerate(rows) for e in seg.push(frame)]


def _closed_turns(events: list[tuple[int, VadEvent]], spans: Spans) -> Spans:
    """Per spoken utterance, the turn reported in the pause after it (where a bot answers)."""
    ends = [(t, e) for t, e in events if isinstance(e, SpeechEnded)]
    found = []
    for i, (start, end) in enumerate(spans):
        next_start = spans[i + 1][0] if i + 1 < len(spans) else end + PAUSE_MS
        for t, e in ends:
            if end < t <= next_start and e.at_ms > start:
                found.append((e.started_at_ms, e.at_ms))
    return found


@pytest.mark.parametrize(("kind", "snr_db"), [("babble", 15), ("pink", 10)])
def test_every_turn_closes_with_boundaries_within_300_ms(kind: str, snr_db: float) -> None:
    pcm, spans = _room(kind, snr_db)
    turns = _closed_turns(_events(pcm, VadConfig()), spans)
    assert len(turns) == len(spans), f"turns {turns} for utterances {spans}"
    for (start, end), (spoken_start, spoken_end) in zip(turns, spans, strict=True):
        assert abs(start - spoken_start) <= TOLERANCE_MS, (turns, spans)
        assert abs(end - spoken_end) <= TOLERANCE_MS, (turns, spans)


def test_without_the_voice_gate_background_voices_keep_turns_open() -> None:
    # The setting that turns it off (GATEWAY_VAD_VOICE_GATE=0) gives the old default:
    # WebRTC's VAD hears speech in the other voices, so turns do not close.
    pcm, spans = _room("babble", 15)
    turns = _closed_turns(_events(pcm, VadConfig(voice_gate=False)), spans)
    assert len(turns) < len(spans)


def test_speech_from_the_first_frame_is_judged_at_the_first_pause() -> None:
    # A stream that begins with the caller's voice: the room is unknown until it has
    # shown a quiet moment, so the start is reported late (at the latest when the
    # caller pauses), with the onset where it was.
    speech = _trimmed("cards-005")
    pcm = np.concatenate([speech, np.zeros(1500 * 16, np.int16)])
    events = _events(pcm, VadConfig())
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechEnded]
    (emitted, started), (_, ended) = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert started.at_ms == 0
    speech_ms = len(speech) // 16
    assert emitted <= speech_ms + 100
    assert abs(ended.at_ms - speech_ms) <= TOLERANCE_MS


def test_held_speech_counts_as_a_turn_and_flush_ends_it() -> None:
    # Frames that stop while the first words are still held (a stalled stream):
    # the session sees a turn in progress and its stall check flushes it.
    seg = VadSegmenter()
    speech = _trimmed("cards-001")
    rows = speech.reshape(-1, FRAME_SAMPLES)
    assert [e for frame in rows for e in seg.push(frame)] == []
    assert seg.in_speech
    events = seg.flush()
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].at_ms == 0 and not seg.in_speech


@pytest.mark.parametrize("name", ["cards-002", "cards-004"])
def test_a_short_lead_in_of_room_noise_is_enough_to_learn_the_room(name: str) -> None:
    # 140 ms of the phone's room before the words: the room is learned there, so
    # the start is reported as soon as WebRTC's start window confirms it.
    pcm = load_wav(AUDIO / f"{name}.wav")
    events = _events(pcm, VadConfig())
    emitted, started = events[0]
    assert isinstance(started, SpeechStarted)
    assert emitted - started.at_ms <= 200
