"""The compiled per-packet path (:mod:`gateway.media._rtp`) and what connects it to aiortc.

After the previous rounds each 20 ms frame still took ~30 small Python steps in
each direction, and the interpreter was half the gateway's CPU. ``_rtp`` (``csrc/``) does
the common case of both directions in one C call:

- inbound, :class:`_rtp.Inbound`, called by :class:`_rtp.Port` as each ICE
  socket's ``datagram_received``: SRTP unprotect, RTP parse, the reception
  statistics of the call's SSRC (:class:`NativeStreamStatistics` reads them for
  aiortc's receiver reports) and, while :class:`~gateway.media.inbound.InboundAudio`
  has armed it, the Opus decode of the next in-order packet into a fresh frame
  handed to the pipeline. Everything else (reordering, loss, DTMF, another SSRC
  or payload type, the recording tap, a corrupt packet) goes to the Python path
  as a decrypted packet;
- outbound, :class:`_rtp.Outbound` (a sender's header, sequence numbers and
  sender-report counters) sends through :class:`_rtp.Route` (SRTP protect and
  ``sendto`` on the selected ICE pair's socket). Without an open route (a TURN
  relay, the DTMF rewrite, before DTLS) it returns the packet for the Python path;
  a ``sendto`` that fails goes through asyncio's transport;
- the encode of outbound speech, :class:`_rtp.Encoder` (a libopus encoder state
  that :class:`~gateway.media.opus.OpusEncoder` configures and hands over):
  it encodes from any int16 buffer without a copy or a ctypes call, and
  :meth:`_rtp.Outbound.send_pcm` encodes and sends a PCM frame in one call.

The C code links nothing: it calls the libsrtp of pylibsrtp's cffi binding and
the libopus of :mod:`gateway.media.libopus` through addresses handed in here.
If the extension is not built, :func:`available` is False and the gateway runs the
Python path it had before (slower, same bytes on the wire).
"""

from __future__ import annotations

import ctypes
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeAlias

from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import clamp_packets_lost

from gateway.media import libopus
from gateway.media.pcm import AudioBuffer
from gateway.media.rtp import HEADER, ntp_time

logger = logging.getLogger(__name__)

try:
    from gateway.media import _rtp as _rtp  # re-exported: transport.py, inbound.py
except ImportError as exc:  # pragma: no cover - depends on the install
    _rtp = None  # type: ignore[assignment]
    logger.warning("gateway.media._rtp is not built (%s): the media path runs in Python", exc)

try:
    from pylibsrtp import _binding
except ImportError:  # pragma: no cover - another pylibsrtp layout
    _binding = None

OPUS_RATE: Final = 48000


def available() -> bool:
    """Whether the compiled path is there."""
    return _rtp is not None


def srtp_function(name: str) -> int | None:
    """The address of libsrtp's ``name`` in pylibsrtp's binding, None if it cannot be had."""
    if _binding is None:
        return None
    address = int(_binding.ffi.cast("uintptr_t", _binding.ffi.addressof(_binding.lib, name)))
    return address or None


def srtp_session(session: Any) -> int | None:
    """The ``srtp_t`` of a pylibsrtp Session (a private name of pylibsrtp 1.0), or None."""
    handle = getattr(session, "_srtp", None)
    if _binding is None or handle is None:
        return None
    address = int(_binding.ffi.cast("uintptr_t", handle[0]))
    return address or None


def opus_function(name: str) -> int:
    """The address of a libopus function, from the library the codec uses."""
    address = ctypes.cast(getattr(libopus.library(), name), ctypes.c_void_p).value
    if not address:
        raise libopus.OpusLibraryError(f"libopus has no {name}")
    return address


def opus_encoder(state: int, frame_samples: int) -> _rtp.Encoder | None:
    """The compiled encoder owning the libopus encoder ``state`` (it destroys it when
    closed or collected), or None without the extension: the caller keeps the state."""
    if _rtp is None:
        return None
    return _rtp.Encoder(
        opus_function("opus_encode"), opus_function("opus_encoder_destroy"), state, frame_samples
    )


class NativeStreamStatistics(StreamStatistics):
    """aiortc's per-SSRC reception statistics, kept by an :class:`_rtp.Inbound`.

    The C path counts the packets it takes; the Python path counts the others
    through :meth:`add`. aiortc's own properties (``fraction_lost``,
    ``packets_lost``, ``jitter``) read the fields below, so its receiver
    reports and ``getStats`` are what they were.
    """

    def __init__(self, inbound: _rtp.Inbound) -> None:
        # Not StreamStatistics.__init__: its fields are read from C here.
        self._inbound = inbound
        self._clockrate = OPUS_RATE
        self._expected_prior = 0
        self._received_prior = 0

    def add(self, packet: Any) -> None:
        self._inbound.count(packet.sequence_number, packet.timestamp)

    # aiortc's attributes, read-only here: only add() and __init__ set them, both replaced.
    @property
    def base_seq(self) -> int | None:  # type: ignore[override]
        return self._inbound.statistics()[0]

    @property
    def max_seq(self) -> int | None:  # type: ignore[override]
        return self._inbound.statistics()[1]

    @property
    def cycles(self) -> int:  # type: ignore[override]
        return self._inbound.statistics()[2]

    @property
    def packets_received(self) -> int:  # type: ignore[override]
        return self._inbound.statistics()[3]

    @property
    def _jitter_q4(self) -> int:  # type: ignore[override]
        return self._inbound.statistics()[4]

    def report_values(self) -> tuple[int, int, int, int]:
        """What a receiver report block reads (fraction lost, packets lost, highest
        sequence, jitter), as aiortc's properties give them, from one read of C's
        fields rather than ten; the fraction's interval baseline moves as they move it."""
        base_seq, max_seq, cycles, received, jitter_q4 = self._inbound.statistics()
        if base_seq is None or max_seq is None:  # nothing received: aiortc's would raise too
            raise TypeError("no packet received yet")
        expected = cycles + max_seq - base_seq + 1
        expected_interval = expected - self._expected_prior
        received_interval = received - self._received_prior
        self._expected_prior, self._received_prior = expected, received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval and lost_interval > 0:
            fraction = (lost_interval << 8) // expected_interval
        return fraction, clamp_packets_lost(expected - received), max_seq, jitter_q4 >> 4


class FrameEncoder(Protocol):
    """What :meth:`PythonOutbound.send_pcm` encodes with (an
    :class:`~gateway.media.opus.OpusEncoder`)."""

    def encode(self, frame: AudioBuffer) -> bytes: ...


class PythonOutbound:
    """What :class:`_rtp.Outbound` does, in Python, for when the extension is not built.

    It never sends itself: every packet goes back to the caller in clear.
    """

    def __init__(
        self,
        transport: object,
        first_byte: int,
        second_byte: int,
        ssrc: int,
        extensions: bytes,
        sequence_number: int,
        timestamp_origin: int,
    ) -> None:
        self._first = first_byte
        self._second = second_byte
        self._ssrc = ssrc
        self._extensions = extensions
        self._origin = timestamp_origin
        self.sequence_number = sequence_number & 0xFFFF
        self.packets = self.octets = self.ntp_timestamp = self.rtp_timestamp = 0

    def send(self, payload: bytes, pts: int) -> bytes | None:
        timestamp = (self._origin + pts) & 0xFFFFFFFF
        header = HEADER.pack(self._first, self._second, self.sequence_number, timestamp, self._ssrc)
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.packets += 1
        self.octets += len(payload)
        self.rtp_timestamp = timestamp
        self.ntp_timestamp = ntp_time(time.time())
        return header + self._extensions + payload

    def send_pcm(self, encoder: FrameEncoder, pcm: AudioBuffer, pts: int) -> bytes | None:
        """Encode one frame with ``encoder`` and :meth:`send` it."""
        return self.send(encoder.encode(pcm), pts)

    def send_due(self, state: object, now: float) -> bool:
        """No fast path here: every frame is the track's Python's (``poll``)."""
        return False


OutboundStream: TypeAlias = "_rtp.Outbound | PythonOutbound"


def outbound(
    transport: object,
    first_byte: int,
    second_byte: int,
    ssrc: int,
    extensions: bytes,
    sequence_number: int,
    timestamp_origin: int,
) -> OutboundStream:
    """A sender's RTP stream: the compiled one if built (``transport`` is read for its
    ``_native_route`` per packet)."""
    kind = PythonOutbound if _rtp is None else _rtp.Outbound
    return kind(
        transport, first_byte, second_byte, ssrc, extensions, sequence_number, timestamp_origin
    )


def inbound(
    session: Any,
    on_unprotected: Callable[[bytes, int], None],
    on_error: Callable[[BaseException], None],
    on_rtcp: Callable[[bytes], None],
) -> _rtp.Inbound | None:
    """The compiled inbound path of a call's receiving SRTP session (pylibsrtp's), or
    None without libsrtp's function or the session (another pylibsrtp)."""
    unprotect, rx = srtp_function("srtp_unprotect"), srtp_session(session)
    if not (unprotect and rx):
        return None
    unprotect_rtcp = srtp_function("srtp_unprotect_rtcp")
    return _rtp.Inbound(
        unprotect,
        rx,
        session,
        on_unprotected,
        on_error,
        unprotect_rtcp,
        on_rtcp if unprotect_rtcp else None,
    )


def route(
    session: Any,
    sock: socket.socket,
    remote: tuple[str, int],
    send_protected: Callable[[bytes], None],
) -> _rtp.Route | None:
    """The compiled outbound route (protect with the call's sending SRTP session and
    ``sendto`` on ``sock``), or None without libsrtp's function or the session, or for
    an address that is not numeric."""
    protect, tx = srtp_function("srtp_protect"), srtp_session(session)
    if not (protect and tx):
        return None
    try:
        return _rtp.Route(
            protect,
            tx,
            session,
            sock,
            remote[0],
            remote[1],
            send_protected,
            srtp_function("srtp_protect_rtcp"),
        )
    except ValueError as exc:  # not a numeric address
        logger.debug("RTP goes through asyncio: %s", exc)
        return None
