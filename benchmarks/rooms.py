"""Noisy rooms for the VAD report: a caller's five utterances over babble or noise.

The caller is ``cards-001`` .. ``cards-005`` (one speaker), each trimmed to its
speech and followed by a pause; the background is the other recordings
(``goforward``, ``numbers``, ``forever-2``: other voices), each looped from its
own offset and summed, or stationary white or pink noise. The background is
scaled so the caller's speech is ``snr_db`` above it (mean power of the
caller's speech vs mean power of the background).

A turn counts as closed when the segmenter reports it in the pause after the
utterance (where a bot would answer) and it did not start before the previous
utterance ended. Boundary errors are the reported start and end against the
utterance's energy span.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from gateway.media.audio import load_wav
from gateway.pipeline.vad import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SpeechEnded,
    SpeechStarted,
    VadSegmenter,
)

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
CALLER = ["cards-001", "cards-002", "cards-003", "cards-004", "cards-005"]
VOICES = ["goforward", "numbers", "forever-2"]
LEAD_IN_S = 1.5
PAUSE_S = 2.5

PCM = NDArray[np.int16]


def frames_of(pcm: PCM) -> PCM:
    n = len(pcm) // FRAME_SAMPLES
    return pcm[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)


def trimmed(name: str) -> PCM:
    """The recording cut to its speech (frames 10 dB over its noise floor), whole frames."""
    pcm = load_wav(AUDIO / f"{name}.wav")
    power = np.mean(frames_of(pcm).astype(np.float64) ** 2, axis=1)
    db = 10 * np.log10(power + 1.0)
    loud = np.flatnonzero(db > np.percentile(db, 10) + 10)
    return pcm[int(loud[0]) * FRAME_SAMPLES : (int(loud[-1]) + 1) * FRAME_SAMPLES]


@dataclass(frozen=True)
class Caller:
    """The caller's side alone, and where each utterance is (ms)."""

    pcm: NDArray[np.float64]
    spans: list[tuple[int, int]]
    speech_power: float


def caller() -> Caller:
    parts: list[NDArray[np.float64]] = [np.zeros(int(LEAD_IN_S * SAMPLE_RATE))]
    spans = []
    at = len(parts[0])
    speech = []
    for name in CALLER:
        utt = trimmed(name).astype(np.float64)
        spans.append((at * 1000 // SAMPLE_RATE, (at + len(utt)) * 1000 // SAMPLE_RATE))
        speech.append(utt)
        pause = np.zeros(int(PAUSE_S * SAMPLE_RATE))
        parts += [utt, pause]
        at += len(utt) + len(pause)
    power = float(np.mean(np.concatenate(speech) ** 2))
    return Caller(np.concatenate(parts), spans, power)


def babble(n: int) -> NDArray[np.float64]:
    """Other voices: each recording looped from its own offset, summed."""
    out = np.zeros(n)
    for k, name in enumerate(VOICES):
        voice = load_wav(AUDIO / f"{name}.wav").astype(np.float64)
        reps = -(-(n + len(voice)) // len(voice))
        out += np.tile(voice, reps)[k * 7919 : k * 7919 + n]
    return out


def white(n: int, seed: int = 1) -> NDArray[np.float64]:
    return np.random.default_rng(seed).normal(size=n)


def pink(n: int, seed: int = 2) -> NDArray[np.float64]:
    """1/f noise: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(np.random.default_rng(seed).normal(size=n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1]
    return np.fft.irfft(spectrum / np.sqrt(f), n=n)


def scaled(background: NDArray[np.float64], speech_power: float, snr_db: float) -> NDArray:
    """``background`` at ``snr_db`` below ``speech_power``."""
    power = float(np.mean(background**2))
    return background * np.sqrt(speech_power / power / 10 ** (snr_db / 10))


def to_pcm(x: NDArray[np.float64]) -> PCM:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class RoomResult:
    closed: int
    spoken: int
    start_errors_ms: list[int]
    end_errors_ms: list[int]
    false_starts_per_min: float
    cpu_us_per_frame: float


def run(
    make: Callable[[], VadSegmenter], pcm: PCM, rounds: int = 1
) -> tuple[list[tuple[int, object]], float]:
    """Events (ms emitted, event) over ``pcm``, and process CPU µs per frame of push().

    The CPU figure is the best of ``rounds`` passes (a fresh segmenter each): the
    least disturbed by other processes on a shared machine.
    """
    rows = frames_of(pcm)
    best = float("inf")
    events: list[tuple[int, object]] = []
    for _ in range(rounds):
        seg = make()
        push = seg.push
        events = []
        t0 = time.process_time()
        for i, frame in enumerate(rows):
            for event in push(frame):
                events.append(((i + 1) * FRAME_MS, event))
        best = min(best, time.process_time() - t0)
    return events, best / len(rows) * 1e6


def score(events: list[tuple[int, object]], spans: list[tuple[int, int]], total_ms: int) -> tuple:
    closed = 0
    starts, ends = [], []
    for i, (s, e) in enumerate(spans):
        prev_end = spans[i - 1][1] if i else 0
        next_start = spans[i + 1][0] if i + 1 < len(spans) else total_ms
        for t, ev in events:
            if (
                isinstance(ev, SpeechEnded)
                and e < t <= next_start
                and ev.started_at_ms >= prev_end
                and ev.at_ms > s
            ):
                closed += 1
                starts.append(ev.started_at_ms - s)
                ends.append(ev.at_ms - e)
                break
    return closed, starts, ends


def room(
    make: Callable[[], VadSegmenter],
    background: NDArray[np.float64],
    snr_db: float,
    who: Caller,
    rounds: int = 1,
) -> RoomResult:
    """Score one segmenter in one room: the mixture, then 60 s of the background alone."""
    n = len(who.pcm)
    noise = scaled(background, who.speech_power, snr_db)
    mix = to_pcm(who.pcm + noise[:n])
    events, cpu = run(make, mix, rounds)
    closed, starts, ends = score(events, who.spans, n * 1000 // SAMPLE_RATE)
    alone = to_pcm(noise[n : n + 60 * SAMPLE_RATE])
    alone_events, _ = run(make, alone)
    false_starts = sum(isinstance(e, SpeechStarted) for _, e in alone_events)
    minutes = len(alone) / SAMPLE_RATE / 60
    return RoomResult(closed, len(who.spans), starts, ends, false_starts / minutes, cpu)


def rooms() -> list[tuple[str, NDArray[np.float64], float]]:
    """(name, background long enough for the mixture and 60 s alone, SNR dB)."""
    n = len(caller().pcm) + 61 * SAMPLE_RATE
    talk = babble(n)
    return [
        ("quiet", np.zeros(n) + 1e-9, 200.0),
        ("babble 30 dB", talk, 30.0),
        ("babble 20 dB", talk, 20.0),
        ("babble 15 dB", talk, 15.0),
        ("babble 10 dB", talk, 10.0),
        ("white 10 dB", white(n), 10.0),
        ("pink 10 dB", pink(n), 10.0),
    ]
