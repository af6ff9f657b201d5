"""CPU cost of the media layer's Opus codec, per 20 ms frame, on real speech.

Run: ``.venv/bin/python benchmarks/opus_codec.py``. Encodes and decodes every
recording in ../shared/audio (16 kHz mono, 20 kbit/s, VoIP mode) frame by frame,
the way a call does, and prints microseconds per frame: the best of several
passes, so other load on the machine inflates the figures as little as possible.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gateway.errors import AudioFileError
from gateway.media.audio import FRAME_SAMPLES, PCM, load_wav
from gateway.media.opus import OpusDecoder, OpusEncoder

AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"
PASSES = 5


def best_us_per_frame(run: Callable[[], int]) -> float:
    """Run ``run`` (which returns the frames it processed) PASSES times; best us/frame."""
    best = float("inf")
    for _ in range(PASSES):
        start = time.perf_counter()
        count = run()
        best = min(best, (time.perf_counter() - start) / count * 1e6)
    return best


def recordings() -> list[PCM]:
    """Every recording, skipping the deliberately broken files."""
    out = []
    for path in sorted(AUDIO.glob("*.wav")):
        try:
            out.append(load_wav(path))
        except AudioFileError:
            pass  # bad.wav, evil.wav, null.wav
    return out


def main() -> None:
    print("Opus codec CPU per 20 ms frame (16 kHz mono, 20 kbit/s), microseconds, best of 5:")
    speech = np.concatenate(recordings())
    usable = len(speech) // FRAME_SAMPLES * FRAME_SAMPLES
    chunks: list[PCM] = [speech[i : i + FRAME_SAMPLES] for i in range(0, usable, FRAME_SAMPLES)]
    packets = OpusEncoder().encode_pcm(speech)

    def encode() -> int:
        encoder = OpusEncoder()
        for chunk in chunks:
            encoder.encode(chunk)
        return len(chunks)

    def decode() -> int:
        decoder = OpusDecoder()
        for packet in packets:
            decoder.decode(packet)
        return len(packets)

    def conceal() -> int:
        decoder = OpusDecoder()
        decoder.decode(packets[0])
        for _ in packets:
            decoder.conceal()
        return len(packets)

    seconds = len(chunks) * FRAME_SAMPLES / 16000
    print(f"  speech: {len(chunks)} frames ({seconds:.1f} s) from {AUDIO.resolve()}")
    print(f"  encode                      {best_us_per_frame(encode):7.1f} us/frame")
    print(f"  decode + resample to 16 kHz {best_us_per_frame(decode):7.1f} us/frame")
    print(f"  conceal (libopus PLC)       {best_us_per_frame(conceal):7.1f} us/frame")
    bitrate = sum(map(len, packets)) * 8 / (len(packets) * 0.020) / 1000
    print(f"  average bitrate             {bitrate:7.1f} kbit/s")


if __name__ == "__main__":
    main()
