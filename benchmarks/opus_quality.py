"""Voice quality against CPU per Opus encoder complexity: PESQ wideband of the gateway's encoder.

Run: ``.venv/bin/python benchmarks/opus_quality.py [--complexity 0 1 3 5 10] [--loss 5]``.

Each usable recording in ../shared/audio (the broken ones are skipped, with the
reason) is encoded the way a call's outbound speech is (:class:`OpusEncoder`:
16 kHz mono, VoIP, 20 kbit/s unconstrained VBR, 20 ms frames), decoded with
:class:`OpusDecoder`, shifted back by the encoder's lookahead
(:data:`ENCODER_DELAY`) and scored against the original with PESQ (ITU-T
P.862.2, wideband MOS-LQO, 1.0-4.64; the ``pesq`` package). Beside each score:
encode CPU per 20 ms frame (process time, best of 10 passes as
benchmarks/opus_codec.py measures it, the rows taking turns within each pass),
mean packet size, and the mean score when ``--loss`` % of packets (seeded,
random) are lost and concealed by libopus.

Reference rows: the gateway's encoder at 24 and 32 kbit/s, and stock aiortc's
encoder (PyAV's FFmpeg libopus: 48 kHz stereo, 96 kbit/s, VoIP, FFmpeg's default
complexity 10), which ignores the 20 kbit/s WhatsApp asks for; its decode is
aligned by cross-correlation (its resampler adds delay of its own).
"""

from __future__ import annotations

import argparse
import fractions
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import av
import numpy as np
from aiortc.codecs.opus import OpusEncoder as AiortcOpusEncoder
from echo_load import AUDIO
from pesq import PesqError, pesq

from gateway.loadtest.recordings import Recording, load_recordings
from gateway.media.opus import ENCODER_DELAY, FRAME_SAMPLES, OpusDecoder, OpusEncoder
from gateway.media.pcm import SAMPLE_RATE

Encode = Callable[[np.ndarray], list[bytes]]


@dataclass(frozen=True)
class Config:
    """One row: how speech is encoded, and how far its decode lags the input."""

    label: str
    encode: Encode
    delay: int | None  # samples at 16 kHz; None: found by cross-correlation


def ours(bitrate: int, complexity: int) -> Encode:
    """The gateway's encoder: one fresh encoder per utterance, as a call's playout makes."""
    return lambda pcm: OpusEncoder(bitrate, complexity=complexity).encode_pcm(pcm)


def stock_aiortc(pcm: np.ndarray) -> list[bytes]:
    """What stock aiortc sends for the same 16 kHz mono frames (it resamples to 48 kHz)."""
    encoder = AiortcOpusEncoder()
    padded = np.concatenate([pcm, np.zeros(4 * FRAME_SAMPLES, np.int16)])
    packets: list[bytes] = []
    for i, start in enumerate(range(0, len(padded) - FRAME_SAMPLES + 1, FRAME_SAMPLES)):
        frame = av.AudioFrame.from_ndarray(
            padded[start : start + FRAME_SAMPLES].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = i * FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        packets += encoder.encode(frame)[0]
    return packets


def decode(packets: Sequence[bytes], lost: frozenset[int] = frozenset()) -> np.ndarray:
    """16 kHz mono; packets whose index is in ``lost`` are concealed by libopus instead."""
    decoder = OpusDecoder()
    out = [decoder.conceal() if i in lost else decoder.decode(p) for i, p in enumerate(packets)]
    return np.concatenate([np.frombuffer(frame, np.int16) for frame in out])


def lag(reference: np.ndarray, decoded: np.ndarray, most: int = 2000) -> int:
    """The shift (0 to ``most`` samples) that best lines ``decoded`` up with ``reference``."""
    y = np.zeros(len(reference) + most)
    head = decoded[: len(y)]
    y[: len(head)] = head
    return int(np.argmax(np.correlate(y, reference.astype(np.float64), "valid")))


def score(reference: np.ndarray, decoded: np.ndarray, delay: int) -> float:
    """PESQ wideband MOS-LQO of ``decoded`` (shifted by ``delay``) against ``reference``."""
    aligned = decoded[delay : delay + len(reference)]
    aligned = np.pad(aligned, (0, len(reference) - len(aligned)))
    try:
        return float(pesq(SAMPLE_RATE, reference, aligned, "wb"))
    except PesqError:
        return float("nan")


@dataclass(frozen=True)
class Row:
    """One configuration's quality figures."""

    mean_bytes: float
    scores: list[float]  # per recording
    lossy: float  # mean score with packet loss, over every recording and loss pattern


def measure(config: Config, recordings: list[Recording], loss: float, patterns: int) -> Row:
    """Scores per recording, and with ``loss`` % of packets lost in ``patterns`` ways."""
    scores, lossy, sizes = [], [], []
    for index, rec in enumerate(recordings):
        packets = config.encode(rec.pcm)
        sizes += map(len, packets)
        clean = decode(packets)
        delay = config.delay if config.delay is not None else lag(rec.pcm, clean)
        scores.append(score(rec.pcm, clean, delay))
        for pattern in range(patterns if loss else 0):
            rng = random.Random(pattern * 1000 + index)  # the same losses for every row
            lost = frozenset(i for i in range(len(packets)) if rng.random() < loss / 100)
            lossy.append(score(rec.pcm, decode(packets, lost), delay))
    lossy_mean = statistics.fmean(lossy) if lossy else float("nan")
    return Row(statistics.fmean(sizes), scores, lossy_mean)


def cpu_us_per_frame(configs: list[Config], speech: np.ndarray, passes: int) -> list[float]:
    """Encode CPU per frame of each configuration: process time, best of ``passes``.

    The configurations take turns within each pass, so a burst of other load on a
    shared machine hits one pass of each rather than every pass of one.
    """
    best = [float("inf")] * len(configs)
    for _ in range(passes):
        for i, config in enumerate(configs):
            start = time.process_time()
            frames = len(config.encode(speech))
            best[i] = min(best[i], (time.process_time() - start) / frames * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--complexity", type=int, nargs="+", default=list(range(11)))
    parser.add_argument("--bitrate", type=int, default=20000, help="bit/s (default 20000)")
    parser.add_argument("--loss", type=float, default=5.0, help="%% packets lost (0: skip)")
    parser.add_argument("--patterns", type=int, default=4, help="loss patterns per recording")
    parser.add_argument("--passes", type=int, default=10, help="CPU passes (best is kept)")
    parser.add_argument("--no-references", action="store_true", help="complexity rows only")
    args = parser.parse_args()
    recordings, warnings = load_recordings([AUDIO])
    for warning in warnings:
        print(f"  {warning}")
    kbps = args.bitrate // 1000
    configs = [
        Config(f"complexity {c}, {kbps} kbit/s", ours(args.bitrate, c), ENCODER_DELAY)
        for c in args.complexity
    ]
    if not args.no_references:
        configs += [
            Config(f"complexity 5, {rate} kbit/s", ours(rate * 1000, 5), ENCODER_DELAY)
            for rate in (24, 32)
        ]
        configs.append(Config("stock aiortc (48k stereo 96k c10)", stock_aiortc, None))
    seconds = sum(rec.seconds for rec in recordings)
    print(
        f"Opus encoder complexity: PESQ wideband MOS-LQO (P.862.2, 1.0-4.64) of the decoded "
        f"speech of {len(recordings)} recordings ({seconds:.1f} s); encode CPU per 20 ms frame "
        f"(process time, best of {args.passes} interleaved passes), mean packet bytes; 'loss': "
        f"mean PESQ with {args.loss:g} % of packets lost ({args.patterns} random patterns "
        "per recording), concealed by libopus"
    )
    speech = np.concatenate([rec.pcm for rec in recordings])
    cpu = cpu_us_per_frame(configs, speech, args.passes)
    names = [rec.name.removesuffix(".wav")[:9] for rec in recordings]
    header = f"{'encoder':<34}{'us/frame':>9}{'bytes':>7} | " + " ".join(f"{n:>9}" for n in names)
    print(header + f" | {'mean':>5} | {'loss':>5}")
    for config, us in zip(configs, cpu, strict=True):
        row = measure(config, recordings, args.loss, args.patterns)
        scores = " ".join(f"{s:>9.3f}" for s in row.scores)
        print(
            f"{config.label:<34}{us:>9.1f}{row.mean_bytes:>7.1f} | {scores} | "
            f"{statistics.fmean(row.scores):>5.3f} | {row.lossy:>5.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
