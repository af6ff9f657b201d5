"""Opus encoding and decoding for the pipeline format, straight through libopus.

The encoder takes 20 ms frames of 16 kHz mono int16 and gives one Opus packet
per frame: libopus encodes 16 kHz natively, which is what Meta asks for
(``maxplaybackrate=16000``, ``maxaveragebitrate=20000``). The decoder gives the
same 16 kHz mono frames back, decoded at that rate by libopus itself (any Opus
packet, mono or stereo, decodes at any of its rates), so there is no resampling
stage and no resampler delay. See :mod:`gateway.media.libopus` for why not PyAV.
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from collections.abc import Callable
from typing import Final

from gateway.media import libopus, native
from gateway.media.pcm import (
    _INT16_FORMATS,
    FRAME_SAMPLES,
    PCM,
    SAMPLE_RATE,
    AudioBuffer,
    as_samples,
    describe,
    silence,
)

OPUS_RATE: Final = 48000
"""Opus' RTP clock rate: RTP timestamps advance 960 per 20 ms whatever the audio rate."""
FRAME_TICKS: Final = OPUS_RATE * FRAME_SAMPLES // SAMPLE_RATE

ENCODER_DELAY: Final = 104
"""libopus' lookahead at 16 kHz in VoIP mode (6.5 ms): decoded audio lags input by this."""

MAX_PACKET_BYTES: Final = 1276
"""The largest 20 ms Opus frame (RFC 6716 3.2.1); at 20 kbit/s packets are ~50 bytes."""
_MAX_DECODED: Final = SAMPLE_RATE * 120 // 1000  # the longest Opus packet: 120 ms

DEFAULT_COMPLEXITY: Final = 5
"""libopus effort (0-10). Its default, 10, costs ~130 us per frame here against ~90 at 5,
for no audible gain on 16 kHz voice at 20 kbit/s; WebRTC uses 5 or less on phones.
The encoder is the largest single cost of a talking call, so this is the hot-path choice;
operators trade it against quality with ``GATEWAY_OPUS_COMPLEXITY`` (see
``benchmarks/opus_quality.py`` for PESQ per complexity)."""
MAX_COMPLEXITY: Final = 10


def checked_complexity(complexity: int) -> int:
    """``complexity`` if libopus takes it (0-10), else ValueError saying so."""
    if not 0 <= complexity <= MAX_COMPLEXITY:
        raise ValueError(f"Opus complexity must be 0-{MAX_COMPLEXITY}, got {complexity}")
    return complexity


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
    is nothing to flush between frames. The settings are those PyAV's FFmpeg
    encoder used before (VoIP application, unconstrained VBR at ``bitrate``), so
    the packets are the same. :meth:`close` frees the libopus state now;
    otherwise it goes with the object.
    """

    def __init__(
        self, bitrate: int = 20000, *, complexity: int | None = DEFAULT_COMPLEXITY
    ) -> None:
        if complexity is not None:
            checked_complexity(complexity)
        lib = libopus.library()
        error = ctypes.c_int()
        state = lib.opus_encoder_create(
            SAMPLE_RATE, 1, libopus.APPLICATION_VOIP, ctypes.byref(error)
        )
        libopus.check(error.value, "encoder_create")
        if not state:
            raise libopus.OpusLibraryError("libopus encoder_create returned no encoder")
        # The compiled encoder (if built) owns the state from here; it encodes from the
        # caller's buffer with no copy, and native.Outbound.send_pcm reads it from here.
        self._native_encoder = native.opus_encoder(state, FRAME_SAMPLES)
        if self._native_encoder is not None:
            self._free: Callable[[], object] = self._native_encoder.close
        else:
            self._free = weakref.finalize(self, lib.opus_encoder_destroy, state)
        self._closed = False  # a plain flag: finalize.alive is Python code, read per frame
        ctl = functools.partial(lib.opus_encoder_ctl, ctypes.c_void_p(state))
        libopus.check(ctl(libopus.SET_BITRATE, ctypes.c_int32(bitrate)), "SET_BITRATE")
        libopus.check(ctl(libopus.SET_VBR, ctypes.c_int32(1)), "SET_VBR")
        libopus.check(ctl(libopus.SET_VBR_CONSTRAINT, ctypes.c_int32(0)), "SET_VBR_CONSTRAINT")
        if complexity is not None:
            libopus.check(ctl(libopus.SET_COMPLEXITY, ctypes.c_int32(complexity)), "COMPLEXITY")
        # Without the extension, encode() goes through ctypes: one input frame and one
        # output buffer, reused by every encode.
        self._encode = functools.partial(lib.opus_encode, state)
        self._in = (ctypes.c_int16 * FRAME_SAMPLES)()
        self._in_bytes = memoryview(self._in).cast("B")
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)

    def encode(self, frame: AudioBuffer) -> bytes:
        """Encode one frame of exactly 320 int16 samples into one Opus packet.

        ``frame`` is any C-contiguous 1-D buffer of native int16 (an ``array('h')``,
        a memoryview of format ``'h'``, an int16 numpy array); anything else, or a
        closed encoder, raises ValueError.
        """
        if self._native_encoder is not None:
            return self._native_encoder.encode(frame)
        if self._closed:
            raise ValueError("the encoder is closed")
        try:
            view = memoryview(frame)  # type: ignore[arg-type]  # a buffer; typed so from 3.12
        except TypeError:
            view = memoryview(b"")
        with view:
            if (
                view.ndim != 1
                or view.format not in _INT16_FORMATS
                or view.nbytes != 2 * FRAME_SAMPLES
                or not view.c_contiguous
            ):
                raise ValueError(
                    f"expected {FRAME_SAMPLES} int16 samples in a C-contiguous buffer,"
                    f" got {describe(frame)}"
                )
            self._in_bytes[:] = view.cast("B")
        size = self._encode(self._in, FRAME_SAMPLES, self._out, MAX_PACKET_BYTES)
        if size <= 0:
            raise RuntimeError(f"libopus encode failed: {libopus.strerror(size)} ({size})")
        return ctypes.string_at(self._out, size)

    def encode_pcm(self, pcm: AudioBuffer) -> list[bytes]:
        """Encode a whole utterance, zero-padded, with enough frames to flush the lookahead."""
        samples = as_samples(pcm)
        count = frames_for(len(samples)) if len(samples) else 0
        padded = silence(count * FRAME_SAMPLES)
        view = memoryview(padded)
        view[: len(samples)] = samples
        return [
            self.encode(view[i : i + FRAME_SAMPLES]) for i in range(0, len(padded), FRAME_SAMPLES)
        ]

    def close(self) -> None:
        """Free the libopus encoder now (encoding afterwards raises ValueError)."""
        self._closed = True
        self._free()


def frames_for(samples: int) -> int:
    """How many packets carry ``samples`` samples through the encoder, lookahead included."""
    return -(-(samples + ENCODER_DELAY) // FRAME_SAMPLES)


@functools.cache
def silence_packet() -> bytes:
    """A 20 ms Opus packet of digital silence, encoded once per process."""
    encoder = OpusEncoder()
    zeros = silence(FRAME_SAMPLES)
    # The first packets of a fresh encoder still carry its start-up state; the
    # third is the steady-state silence packet (8 bytes).
    packet = b""
    for _ in range(3):
        packet = encoder.encode(zeros)
    return packet


class OpusDecoder:
    """Decodes Opus packets into 16 kHz mono int16: exactly 320 samples per 20 ms packet.

    :meth:`close` frees the libopus state now; otherwise it goes with the object.
    """

    def __init__(self) -> None:
        lib = libopus.library()
        error = ctypes.c_int()
        state = lib.opus_decoder_create(SAMPLE_RATE, 1, ctypes.byref(error))
        libopus.check(error.value, "decoder_create")
        if not state:
            raise libopus.OpusLibraryError("libopus decoder_create returned no decoder")
        self._free = weakref.finalize(self, lib.opus_decoder_destroy, state)
        self._closed = False
        self.address: int = state
        """The libopus decoder state (for the compiled path, which decodes in-order
        packets with it: one state, so concealment continues either's audio)."""
        self._decode = functools.partial(lib.opus_decode, state)
        # Decoded into one buffer, then copied out (an array slice is a copy): each
        # frame handed on is the callee's. Never resized, so its address holds.
        self._pcm = silence(_MAX_DECODED)
        self._pcm_address = self._pcm.buffer_info()[0]
        self._started = False

    def decode(self, payload: bytes) -> PCM:
        """Decode one packet; raises ValueError if it is empty or corrupt."""
        if not payload:
            raise ValueError("empty Opus payload")
        if self._closed:
            raise ValueError("the decoder is closed")
        n = self._decode(payload, len(payload), self._pcm_address, _MAX_DECODED, 0)
        if n < 0:
            raise ValueError(f"cannot decode Opus packet: {libopus.strerror(n)}")
        self._started = True
        return self._pcm[:n]

    def note_decoded(self) -> None:
        """Record that a packet was decoded on this state elsewhere (the compiled path,
        :mod:`gateway.media.native`), so :meth:`conceal` continues from it."""
        self._started = True

    def conceal(self) -> PCM:
        """320 samples to stand in for one lost 20 ms packet.

        This is libopus' own packet-loss concealment rather than a repeat of the
        last frame: it continues the voice's pitch and fades it out over a few
        lost packets, and it keeps the decoder's state continuous, so the next
        real packet joins without a click. Before the first packet: silence.
        """
        if not self._started or self._closed:
            return silence(FRAME_SAMPLES)
        # No data: libopus conceals exactly frame_size samples (RFC 6716 4.4).
        n = self._decode(None, 0, self._pcm_address, FRAME_SAMPLES, 0)
        if n != FRAME_SAMPLES:
            return silence(FRAME_SAMPLES)
        return self._pcm[:n]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` freed the libopus state."""
        return self._closed

    def close(self) -> None:
        """Free the libopus decoder now (decoding afterwards raises ValueError)."""
        self._closed = True
        self._free()
