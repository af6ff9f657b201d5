"""CPU cost of the media layer's Opus codec, per 20 ms frame, on real speech.

Run: ``.venv/bin/python benchmarks/opus_codec.py``. Encodes and decodes every
recording in ../shared/audio (16 kHz mono, 20 kbit/s, VoIP mode) frame by frame,
the way a call does, and prints microseconds of process CPU time per frame: the
best of several passes, so other load on the machine inflates the figures as
little as possible. Beside it, the same work through PyAV's FFmpeg codecs, as
the gateway did before (and as aiortc does): decode at 48 kHz, then resample to
16 kHz mono with libswresample.
"""

from __future__ import annotations

import fractions
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from gateway.errors import AudioFileError
from gateway.media.audio import FRAME_SAMPLES, load_wav
from gateway.media.opus import OpusDecoder, OpusEncoder
from gateway.media.pcm import Int16Array as PCM

AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"
PASSES = 5


def best_us_per_frame(run: Callable[[], int]) -> float:
    """Run ``run`` (which returns the frames it processed) PASSES times; best us/frame."""
    best = float("inf")
    for _ in range(PASSES):
        start = time.process_time()
        count = run()
        best = min(best, (time.process_time() - start) / count * 1e6)
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


class PyAVEncoder:
    """The gateway's encoder before: FFmpeg's libopus wrapper through PyAV (same settings)."""

    def __init__(self) -> None:
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.sample_rate = 16000
        self.codec.layout = "mono"
        self.codec.format = "s16"
        self.codec.bit_rate = 20000
        self.codec.time_base = fractions.Fraction(1, 16000)
        self.codec.options = {
            "application": "voip",
            "frame_duration": "20",
            "compression_level": "5",
        }
        self.codec.open()
        self.frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        self.frame.sample_rate = 16000
        self.samples = np.frombuffer(self.frame.planes[0], dtype=np.int16)
        self.pts = 0

    def encode(self, pcm: PCM) -> bytes:
        self.samples[:] = pcm
        self.frame.pts = self.pts
        self.pts += FRAME_SAMPLES
        return bytes(self.codec.encode(self.frame)[0])


class PyAVDecoder:
    """The gateway's decoder before: 48 kHz through PyAV, then libswresample to 16 kHz mono."""

    def __init__(self) -> None:
        self.codec = av.CodecContext.create("libopus", "r")
        self.codec.layout = "mono"
        self.codec.format = "s16"
        self.codec.sample_rate = 48000
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)

    def decode(self, payload: bytes) -> PCM:
        out = [
            f.to_ndarray().reshape(-1)
            for frame in self.codec.decode(av.Packet(payload))
            for f in self.resampler.resample(frame)
        ]
        return out[0] if len(out) == 1 else np.concatenate(out)


def main() -> None:
    print("Opus codec CPU per 20 ms frame (16 kHz mono, 20 kbit/s), microseconds, best of 5:")
    speech = np.concatenate(recordings())
    usable = len(speech) // FRAME_SAMPLES * FRAME_SAMPLES
    chunks: list[PCM] = [speech[i : i + FRAME_SAMPLES] for i in range(0, usable, FRAME_SAMPLES)]
    packets = OpusEncoder().encode_pcm(speech)

    def encoding(make: Callable[[], OpusEncoder | PyAVEncoder]) -> Callable[[], int]:
        def run() -> int:
            encoder = make()
            for chunk in chunks:
                encoder.encode(chunk)
            return len(chunks)

        return run

    def decoding(make: Callable[[], OpusDecoder | PyAVDecoder]) -> Callable[[], int]:
        def run() -> int:
            decoder = make()
            for packet in packets:
                decoder.decode(packet)
            return len(packets)

        return run

    def conceal() -> int:
        decoder = OpusDecoder()
        decoder.decode(packets[0])
        for _ in packets:
            decoder.conceal()
        return len(packets)

    seconds = len(chunks) * FRAME_SAMPLES / 16000
    print(f"  speech: {len(chunks)} frames ({seconds:.1f} s) from {AUDIO.resolve()}")
    rows = [
        ("encode (libopus)", encoding(OpusEncoder)),
        ("encode (PyAV/FFmpeg, before)", encoding(PyAVEncoder)),
        ("decode to 16 kHz (libopus)", decoding(OpusDecoder)),
        ("decode 48 kHz + resample (PyAV)", decoding(PyAVDecoder)),
        ("conceal (libopus PLC)", conceal),
    ]
    for label, run in rows:
        print(f"  {label:<32}{best_us_per_frame(run):7.1f} us/frame")
    bitrate = sum(map(len, packets)) * 8 / (len(packets) * 0.020) / 1000
    print(f"  average bitrate             {bitrate:7.1f} kbit/s")


if __name__ == "__main__":
    main()
