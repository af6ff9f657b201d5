"""Report how VadSegmenter cuts the recorded speech in shared/audio into turns.

Per file: the speech span by energy (frames 10 dB above the file's noise floor),
the turns found, how long after its first voiced frame the start was reported,
and the longest pause the VAD saw inside a turn. Then every
ordered pair of files, trimmed to their speech and joined by 1 s and by 300 ms
of silence (expected: two turns, one turn); stationary noise shaped like each
file's background (expected: no turn). Then the cost of push() per frame. Last, the
noisy-room table of issue 9 (``rooms.py``): the caller over babble at 30/20/15/10 dB
and white and pink noise at 10 dB, ours beside Silero VAD.

    .venv/bin/python benchmarks/vad_report.py [--voice-gate 0] [--hangover-ms 600] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import webrtcvad
from numpy.typing import NDArray

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
FILES = [
    "cards-001",
    "cards-002",
    "cards-003",
    "cards-004",
    "cards-005",
    "goforward",
    "numbers",
    "forever-2",
]


def frames_of(pcm: NDArray[np.int16]) -> NDArray[np.int16]:
    """Whole 20 ms frames as rows (a zero-padded last frame would look like a click)."""
    n = len(pcm) // FRAME_SAMPLES
    return pcm[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)


def energy_span(pcm: NDArray[np.int16], above_db: float = 10.0) -> tuple[int, int]:
    """First and last ms of frames ``above_db`` over the noise floor (10th percentile)."""
    power = np.mean(frames_of(pcm).astype(np.float64) ** 2, axis=1)
    db = 10 * np.log10(power + 1.0)
    loud = np.flatnonzero(db > np.percentile(db, 10) + above_db)
    return int(loud[0]) * FRAME_MS, (int(loud[-1]) + 1) * FRAME_MS


def segment(config: VadConfig, pcm: NDArray[np.int16]) -> list[tuple[int, VadEvent]]:
    """(ms when emitted, event) for ``pcm`` pushed frame by frame, then flushed."""
    seg = VadSegmenter(config)
    events: list[tuple[int, VadEvent]] = []
    for i, frame in enumerate(frames_of(pcm)):
        events.extend(((i + 1) * FRAME_MS, e) for e in seg.push(frame))
    events.extend((len(pcm) * 1000 // SAMPLE_RATE, e) for e in seg.flush())
    return events


def turns(events: list[tuple[int, VadEvent]]) -> list[tuple[int, int]]:
    """(start ms, end ms) of each reported utterance."""
    return [(e.started_at_ms, e.at_ms) for _, e in events if isinstance(e, SpeechEnded)]


def longest_pause_ms(config: VadConfig, pcm: NDArray[np.int16], span: tuple[int, int]) -> int:
    """Longest run of unvoiced frames strictly inside ``span`` (the VAD's view of pauses)."""
    vad = webrtcvad.Vad(config.aggressiveness)
    voiced = [vad.is_speech(f.tobytes(), SAMPLE_RATE) for f in frames_of(pcm)]
    inside = np.array(voiced[span[0] // FRAME_MS : span[1] // FRAME_MS], dtype=np.int8)
    # Runs of zeros lie between consecutive voiced frames (with sentinels at both ends).
    edges = np.flatnonzero(np.concatenate(([1], inside, [1])))
    return int(np.max(np.diff(edges)) - 1) * FRAME_MS


def background_noise(pcm: NDArray[np.int16], seconds: float, seed: int) -> NDArray[np.int16]:
    """Stationary noise with the spectrum and level of the file's first 160 ms (no speech)."""
    quiet = pcm[: 160 * SAMPLE_RATE // 1000].astype(np.float64)
    win = 512
    starts = range(0, len(quiet) - win + 1, win // 4)
    segs = np.stack([quiet[i : i + win] * np.hanning(win) for i in starts])
    shape = np.sqrt(np.mean(np.abs(np.fft.rfft(segs, axis=1)) ** 2, axis=0))
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).normal(size=n))
    gain = np.interp(np.linspace(0, 1, len(spectrum)), np.linspace(0, 1, len(shape)), shape)
    noise = np.fft.irfft(spectrum * gain, n=n)
    noise *= np.std(quiet) / np.std(noise)
    return np.clip(noise, -32768, 32767).astype(np.int16)


def main() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(VadConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=20, help="passes for the timing")
    parser.add_argument(
        "--rounds", type=int, default=5, help="passes per noisy room for its CPU figure (best)"
    )
    args = parser.parse_args()
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(VadConfig)
        if getattr(args, f.name) is not None
    }
    config = VadConfig(**overrides)

    print(
        "VadSegmenter on shared/audio: turns per file vs energy span, turns for file pairs "
        "joined by 1 s / 300 ms of silence, and push() cost in µs per 20 ms frame"
    )
    print(config)
    audio = {name: load_wav(AUDIO / f"{name}.wav") for name in FILES}

    print(
        f"\n{'file':<10} {'sec':>5}  {'energy span ms':<14}  {'turns (start-end ms)':<20}"
        "  start seen  longest pause"
    )
    ok = 0
    for name, pcm in audio.items():
        span = energy_span(pcm)
        events = segment(config, pcm)
        found = turns(events)
        discarded = sum(isinstance(e, SpeechDiscarded) for _, e in events)
        seen = [f"+{t - e.at_ms}" for t, e in events if isinstance(e, SpeechStarted)]
        pause = longest_pause_ms(config, pcm, found[0]) if found else 0
        ok += len(found) == 1
        found_s = ", ".join(f"{a}-{b}" for a, b in found) or "none"
        extra = f"  (+{discarded} discarded)" if discarded else ""
        print(
            f"{name:<10} {len(pcm) / SAMPLE_RATE:5.2f}  {span[0]:>5}-{span[1]:<8}  "
            f"{found_s:<20}  {','.join(seen):>7} ms  {pause:>6} ms{extra}"
        )
    print(f"files with exactly one turn: {ok}/{len(audio)}")

    # Trim each file to its energy span so the silence between the two is the gap.
    speech = {}
    for name, pcm in audio.items():
        first_ms, last_ms = energy_span(pcm)
        speech[name] = pcm[first_ms * SAMPLE_RATE // 1000 : last_ms * SAMPLE_RATE // 1000]
    for gap_ms, expected in ((1000, 2), (300, 1)):
        gap = np.zeros(gap_ms * SAMPLE_RATE // 1000, np.int16)
        counts: dict[int, int] = {}
        wrong = []
        for a, b in itertools.permutations(FILES, 2):
            n = len(turns(segment(config, np.concatenate([speech[a], gap, speech[b]]))))
            counts[n] = counts.get(n, 0) + 1
            if n != expected:
                wrong.append(f"{a}+{b}:{n}")
        summary = ", ".join(f"{n} turn(s): {c}" for n, c in sorted(counts.items()))
        print(f"\npairs with {gap_ms} ms gap (expect {expected}): {summary}")
        if wrong:
            print("  unexpected: " + " ".join(wrong))

    # Every file starts with >= 160 ms of its room noise; a start would be a false barge-in.
    false_starts = 0
    for seed, pcm in enumerate(audio.values()):
        events = segment(config, background_noise(pcm, 5.0, seed))
        false_starts += sum(isinstance(e, SpeechStarted) for _, e in events)
    print(
        f"\n5 s of each file's background noise (spectrum-matched, no speech): "
        f"{false_starts} speech start(s) in {len(audio)} files (expect 0)"
    )

    # CPU (process) time, interleaved passes so a loaded machine hits all three alike;
    # the best pass of each is the one least disturbed by other processes.
    all_frames = np.concatenate([frames_of(pcm) for pcm in audio.values()])
    gates_off = dataclasses.replace(config, level_gate=False, voice_gate=False)
    vad = webrtcvad.Vad(config.aggressiveness)
    passes = {
        "push()": VadSegmenter(config).push,
        "push() without gates": VadSegmenter(gates_off).push,
        "webrtcvad alone": lambda frame: vad.is_speech(frame.data.cast("B"), SAMPLE_RATE),
    }
    best = dict.fromkeys(passes, float("inf"))
    for _ in range(args.repeat):
        for name, push in passes.items():
            start = time.process_time()
            for frame in all_frames:
                push(frame)
            best[name] = min(best[name], time.process_time() - start)
    print(
        f"\nCPU per 20 ms frame, best of {args.repeat} passes over {len(all_frames)} frames: "
        + ", ".join(f"{k} {v / len(all_frames) * 1e6:.2f} µs" for k, v in best.items())
    )
    args.config = config
    return args


def noisy_rooms(config: VadConfig, rounds: int) -> None:
    """The table of issue 9: turns closed, boundary errors, false starts, CPU per frame."""
    from rooms import caller, room, rooms
    from silero_ref import silero_segmenter

    candidates = {
        "WebRTC VAD only": lambda: VadSegmenter(VadConfig(level_gate=False, voice_gate=False)),
        "floor gate only (GATEWAY_VAD_VOICE_GATE=0)": lambda: VadSegmenter(
            VadConfig(voice_gate=False)
        ),
        "ours (default: voice gate)" if config == VadConfig() else f"ours ({config})": lambda: (
            VadSegmenter(config)
        ),
        "reference: Silero 0.7 + volume 40 dB": silero_segmenter,
    }
    who = caller()
    print(
        "\nNoisy rooms: caller cards-001..005 (pauses 2.5 s) over other voices "
        "(goforward+numbers+forever-2 looped) or noise; false starts in 60 s of the "
        f"background alone; CPU = process time of push() per 20 ms frame, best of {rounds} "
        "passes over the mixture"
    )
    header = "| room | " + " | ".join(candidates) + " |"
    print(header)
    print("|---" * (len(candidates) + 1) + "|")
    for name, background, snr in rooms():
        cells = []
        for label, make in candidates.items():
            # Silero costs ~0.3 ms a frame: one pass is enough to see it.
            r = room(make, background, snr, who, 1 if label.startswith("reference") else rounds)
            start = max(map(abs, r.start_errors_ms), default=0)
            end = max(map(abs, r.end_errors_ms), default=0)
            bounds = f" ±{start}/{end} ms" if r.closed else ""
            cells.append(
                f"{r.closed}/{r.spoken}{bounds}, {r.false_starts_per_min:.0f} fs/min, "
                f"{r.cpu_us_per_frame:.1f} µs"
            )
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(
        "cells: turns closed of spoken, max |start|/|end| boundary error, false starts per "
        "minute of background alone, CPU µs per frame"
    )


if __name__ == "__main__":
    args = main()
    noisy_rooms(args.config, args.rounds)
