"""Opus encoding and decoding for the pipeline format, through PyAV's libopus.

The encoder takes 20 ms frames of 16 kHz mono int16 and gives one Opus packet
per frame: libopus encodes 16 kHz natively, which is what Meta asks for
(``maxplaybackrate=16000``, ``maxaveragebitrate=20000``). The decoder gives the
same 16 kHz frames back: FFmpeg's libopus wrapper always decodes at 48 kHz, so a
libswresample stage brings it down to 16 kHz; that costs less than the decode.
"""

from __future__ import annotations

import fractions
import functools
from typing import Final

import av
import numpy as np

from gateway.media.audio import FRAME_MS, FRAME_SAMPLES, PCM, SAMPLE_RATE, samples_of

OPUS_RATE: Final = 48000
"""Opus' RTP clock rate: RTP timestamps advance 960 per 20 ms whatever the audio rate."""
FRAME_TICKS: Final = OPUS_RATE * FRAME_SAMPLES // SAMPLE_RATE

ENCODER_DELAY: Final = 104
"""libopus' lookahead at 16 kHz in VoIP mode (6.5 ms): decoded audio lags input by this."""

_TIME_BASE: Final = fractions.Fraction(1, SAMPLE_RATE)

DEFAULT_COMPLEXITY: Final = 5
"""libopus effort (0-10). Its default, 10, costs ~130 us per frame here against ~90 at 5,
for no audible gain on 16 kHz voice at 20 kbit/s; WebRTC uses 5 or less on phones.
The encoder is the largest single cost of a talking call, so this is the hot-path choice."""


def packet_duration(payload: bytes) -> int:
    """The duration of an Opus packet in 48 kHz samples, from its TOC byte (RFC 6716 3.1).

    Raises ValueError for a packet too short to say.
    """
    if not payload:
        raise ValueError("empty Opus packet")
    toc = payload[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        per_frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        per_frame = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        per_frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code < 3:
        count = 2
    else:
        if len(payload) < 2:
            raise ValueError("Opus code 3 packet without a frame count byte")
        count = payload[1] & 0x3F
        if count == 0:
            raise ValueError("Opus code 3 packet with 0 frames")
    duration = per_frame * count
    if duration > 5760:
        raise ValueError(f"Opus packet of {duration} samples is longer than 120 ms")
    return duration


class OpusEncoder:
    """Encodes 20 ms frames of 16 kHz mono int16 into Opus packets, one packet per frame.

    libopus returns each packet as soon as its frame goes in (its 6.5 ms
    lookahead is carried inside the packets, see :data:`ENCODER_DELAY`), so there
    is nothing to flush between frames.
    """

    def __init__(
        self, bitrate: int = 20000, *, complexity: int | None = DEFAULT_COMPLEXITY
    ) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate = SAMPLE_RATE
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = bitrate
        codec.time_base = _TIME_BASE
        options = {"application": "voip", "frame_duration": str(FRAME_MS)}
        if complexity is not None:
            options["compression_level"] = str(complexity)
        codec.options = options
        codec.open()
        self._codec = codec

        # One frame, refilled in place for every encode: PyAV has handed the
        # samples to libopus by the time encode() returns.
        self._frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        self._frame.sample_rate = SAMPLE_RATE
        self._frame.time_base = _TIME_BASE
        self._samples = samples_of(self._frame)
        self._pts = 0

    def encode(self, frame: PCM) -> bytes:
        """Encode one frame of exactly 320 int16 samples into one Opus packet."""
        if frame.shape != (FRAME_SAMPLES,) or frame.dtype != np.int16:
            raise ValueError(
                f"expected {FRAME_SAMPLES} int16 samples, got {frame.shape} {frame.dtype}"
            )
        self._samples[:] = frame
        self._frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        packets = self._codec.encode(self._frame)
        if len(packets) != 1:
            raise RuntimeError(f"libopus returned {len(packets)} packets for one frame")
        return bytes(packets[0])

    def encode_pcm(self, pcm: PCM) -> list[bytes]:
        """Encode a whole utterance, zero-padded, with enough frames to flush the lookahead."""
        count = frames_for(len(pcm)) if len(pcm) else 0
        padded = np.zeros(count * FRAME_SAMPLES, dtype=np.int16)
        padded[: len(pcm)] = pcm
        return [
            self.encode(padded[i : i + FRAME_SAMPLES]) for i in range(0, len(padded), FRAME_SAMPLES)
        ]


def frames_for(samples: int) -> int:
    """How many packets carry ``samples`` samples through the encoder, lookahead included."""
    return -(-(samples + ENCODER_DELAY) // FRAME_SAMPLES)


@functools.cache
def silence_packet() -> bytes:
    """A 20 ms Opus packet of digital silence, encoded once per process."""
    encoder = OpusEncoder()
    zeros = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    # The first packets of a fresh encoder still carry its start-up state; the
    # third is the steady-state silence packet (8 bytes).
    packet = b""
    for _ in range(3):
        packet = encoder.encode(zeros)
    return packet


def _plc_packet(toc: int) -> bytes:
    """A TOC-only 20 ms packet in the same mode as ``toc``.

    A frame with no data is a lost frame to libopus (RFC 6716 3.2.1), so
    decoding this runs libopus' packet-loss concealment for 20 ms.
    """
    config = toc >> 3
    if config < 12:
        config = (config & ~3) | 1
    elif config < 16:
        config = (config & ~1) | 1
    else:
        config = (config & ~3) | 3
    return bytes(((config << 3) | (toc & 0x04),))


class OpusDecoder:
    """Decodes Opus packets into 16 kHz mono int16: exactly 320 samples per 20 ms packet."""

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "r")
        codec.layout = "mono"  # libopus downmixes stereo packets itself
        codec.format = "s16"
        codec.sample_rate = OPUS_RATE
        self._codec = codec
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        # libswresample holds back 16 output samples of filter delay. Priming it
        # with 20 ms of silence now makes every later 20 ms packet come out as
        # exactly 320 samples, instead of 304 once and then a constant shift.
        priming = av.AudioFrame(format="s16", layout="mono", samples=FRAME_TICKS)
        priming.sample_rate = OPUS_RATE
        for plane in priming.planes:
            plane.update(bytes(plane.buffer_size))
        self._resampler.resample(priming)
        self._last_toc = -1
        self._plc: bytes | None = None

    def decode(self, payload: bytes) -> PCM:
        """Decode one packet; raises ValueError if it is empty or corrupt."""
        if not payload:
            # An empty packet would put FFmpeg's decoder into end-of-stream for good.
            raise ValueError("empty Opus payload")
        pcm = self._decode(payload)
        if payload[0] != self._last_toc:
            self._last_toc = payload[0]
            self._plc = _plc_packet(payload[0])
        return pcm

    def conceal(self) -> PCM:
        """320 samples to stand in for one lost 20 ms packet.

        This is libopus' own packet-loss concealment rather than a repeat of the
        last frame: it continues the voice's pitch and fades it out over a few
        lost packets, and it keeps the decoder's state continuous, so the next
        real packet joins without a click. Before the first packet: silence.
        """
        if self._plc is None:
            return np.zeros(FRAME_SAMPLES, dtype=np.int16)
        return self._decode(self._plc)

    def _decode(self, payload: bytes) -> PCM:
        try:
            decoded = self._codec.decode(av.Packet(payload))
        except av.FFmpegError as exc:
            raise ValueError(f"cannot decode Opus packet: {exc}") from exc
        out: list[av.AudioFrame] = []
        for frame in decoded:
            out.extend(self._resampler.resample(frame))
        if len(out) == 1:
            return samples_of(out[0])
        if not out:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([samples_of(f) for f in out])
