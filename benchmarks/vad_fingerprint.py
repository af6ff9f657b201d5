"""A fingerprint of the VAD's turns: every frame's turn state, every event and its audio.

A change to how :class:`~gateway.pipeline.vad.VadSegmenter` computes (a step moved
to C, a buffer of another type) must not change a single turn. This runs the
segmenter over every shared recording and over the noisy rooms of ``rooms.py``
(the caller's five utterances over babble, white and pink noise, then 60 s of the
background alone), in four configurations (WebRTC's VAD alone, the level gate,
the voice gate, and an aggressive one with short turns that forces cuts), and
hashes, per frame, ``in_speech``, ``turn_voiced_ms``, ``turn_silence_ms``,
``turn_is_utterance``, every event (times and PCM) and every 7th frame's
``peek()``, then ``flush()``. Compare the printed hashes of two revisions:

    python benchmarks/vad_fingerprint.py            # this checkout
    python benchmarks/vad_fingerprint.py --python   # the Python fallback of the step
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rooms import AUDIO, caller, rooms, scaled, to_pcm

from gateway.media.audio import load_wav
from gateway.pipeline.vad import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SpeechDiscarded,
    SpeechEnded,
    SpeechStarted,
    VadConfig,
    VadSegmenter,
)

RECORDINGS = ["cards-001", "cards-002", "cards-003", "cards-004", "cards-005"]
RECORDINGS += ["forever-2", "goforward", "numbers"]
CONFIGS = {
    "webrtc only": VadConfig(level_gate=False, voice_gate=False),
    "level gate": VadConfig(voice_gate=False),
    "voice gate (default)": VadConfig(),
    "aggressive, short turns": VadConfig(
        aggressiveness=3,
        hangover_ms=300,
        max_utterance_ms=1500,
        start_window_frames=5,
        start_voiced_frames=3,
        pre_roll_ms=100,
    ),
    "64-frame window": VadConfig(start_window_frames=64, start_voiced_frames=40),
}


def _event(digest: hashlib._Hash, event: object) -> None:
    if isinstance(event, SpeechStarted):
        digest.update(f"S{event.at_ms}".encode())
    elif isinstance(event, SpeechEnded):
        digest.update(f"E{event.at_ms},{event.started_at_ms},{len(event.pcm)}".encode())
        digest.update(np.asarray(event.pcm, np.int16).tobytes())
    elif isinstance(event, SpeechDiscarded):
        digest.update(f"D{event.at_ms},{event.started_at_ms}".encode())
    else:
        raise TypeError(event)


def fingerprint(config: VadConfig, pcm: np.ndarray, native: bool) -> str:
    segmenter = VadSegmenter(config, native=native)
    digest = hashlib.sha256()
    n = len(pcm) // FRAME_SAMPLES
    frames = pcm[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
    for i, frame in enumerate(frames):
        for event in segmenter.push(frame):
            _event(digest, event)
        digest.update(
            f"{int(segmenter.in_speech)}{segmenter.turn_voiced_ms},{segmenter.turn_silence_ms}"
            f"{int(segmenter.turn_is_utterance)};".encode()
        )
        if i % 7 == 0:
            turn = segmenter.peek()
            if turn is not None:
                _event(digest, turn)
    for event in segmenter.flush():
        _event(digest, event)
    return digest.hexdigest()


def inputs() -> list[tuple[str, np.ndarray]]:
    out = [(name, load_wav(AUDIO / f"{name}.wav")) for name in RECORDINGS]
    who = caller()
    for name, background, snr in rooms():
        noise = scaled(background, who.speech_power, snr)
        n = len(who.pcm)
        out.append((f"{name}: caller", to_pcm(who.pcm + noise[:n])))
        out.append((f"{name}: alone", to_pcm(noise[n : n + 60 * SAMPLE_RATE])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="store_true", help="the step's Python fallback")
    args = parser.parse_args()
    everything = hashlib.sha256()
    audio = inputs()
    for label, config in CONFIGS.items():
        per_config = hashlib.sha256()
        for _name, pcm in audio:
            per_config.update(fingerprint(config, pcm, not args.python).encode())
        everything.update(per_config.digest())
        print(f"{label:<26} {per_config.hexdigest()[:16]}")
    print(f"{'all':<26} {everything.hexdigest()[:16]}  ({len(audio)} inputs)")


if __name__ == "__main__":
    main()
