"""The RTP sender of a call's outbound audio: aiortc's, less its per-packet Python.

aiortc's :class:`~aiortc.RTCRtpSender` is general: per packet it builds an
``RTCEncodedFrame`` and an ``RtpPacket``, converts the packet's timestamp through
``Fraction`` time bases, reads the wall clock twice through ``datetime`` (for an
abs-send-time extension that audio never negotiates, and for the NTP time of the
next RTCP sender report), serializes the header extensions from scratch, and
keeps every packet for retransmissions that audio never asks for. The gateway's
outbound audio is always a :class:`~gateway.media.playout.PlayoutTrack` of
ready-made 20 ms Opus packets, so :class:`PlayoutSender` does only what changes
per packet: the sequence number and timestamp in a 12-byte header, before the
header extensions serialized once per call (the mid, when negotiated; audio
level is never sent for pre-encoded packets), then the payload.

No task per call wakes to send: the sender subscribes to the event loop's
:class:`~gateway.media.frameclock.FrameClock`, whose one timer per 20 ms tick
calls every call's :meth:`PlayoutSender._on_tick`; that polls the track for the
frames due (:meth:`~gateway.media.playout.PlayoutTrack.poll`, which also paces
and catches up after a stall) and hands each packet to
:meth:`~gateway.media.transport.CallTransport.send_rtp_now` (DTMF substitution,
SRTP, ``sendto``). A call whose sending fails is ended alone: its sender
unsubscribes and its RTP task returns, as aiortc's loop would.

On the wire nothing changes: same SSRC, random initial sequence number and
timestamp, marker bit on every packet (aiortc marks the last packet of each
frame, and an audio frame is one packet), same extensions, and the same RTCP
sender reports (packet and octet counts, RTP and NTP time of the last packet).
Anything else (another kind of track or transport, NACK negotiated, a header
extension that changes per packet) runs aiortc's own loop.

The sender is adopted from the transceiver aiortc made (:meth:`PlayoutSender.adopt`,
before it starts sending): aiortc creates its senders itself, and the class has
no state of its own beyond what it sets when its loop starts.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Final

from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from aiortc.utils import random32

from gateway.media.frameclock import frame_clock
from gateway.media.playout import PlayoutTrack
from gateway.media.transport import CallTransport

logger = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("!BBHII")
_NTP_UNIX_OFFSET: Final = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)
_NTP_SCALE: Final = 1 << 32


def ntp_time(unix_seconds: float) -> int:
    """64-bit NTP timestamp (RFC 3550 4) of a Unix time."""
    return int((unix_seconds + _NTP_UNIX_OFFSET) * _NTP_SCALE)


class PlayoutSender(RTCRtpSender):
    """An :class:`~aiortc.RTCRtpSender` that sends a :class:`PlayoutTrack` lean.

    Use :meth:`adopt` on the sender of a transceiver before the connection starts
    sending (before ``setLocalDescription`` of the answer or offer).
    """

    # Set when the playout starts (the class is adopted, so there is no __init__).
    _playing: PlayoutTrack
    _ended: asyncio.Future[None]
    _first_byte: int
    _second_byte: int
    _extensions: bytes
    _sequence_number: int
    _timestamp_origin: int
    _packets: int
    _octets: int

    @classmethod
    def adopt(cls, sender: RTCRtpSender) -> PlayoutSender:
        """Make aiortc's ``sender`` a PlayoutSender (the same object); returns it."""
        if not isinstance(sender, cls):
            if type(sender) is not RTCRtpSender:
                raise TypeError(f"cannot adopt a {type(sender).__name__}")
            sender.__class__ = cls
        assert isinstance(sender, cls)
        return sender

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        track = self.track
        extensions = self._extension_bytes()
        if (
            not isinstance(track, PlayoutTrack)
            or not hasattr(self.transport, "send_rtp_now")  # a CallTransport (or a test's)
            or extensions is None
            or codec.payloadType is None
            or any(fb.type == "nack" for fb in codec.rtcpFeedback)
        ):
            await super()._run_rtp(codec)
            return
        await self._run_playout(track, codec.payloadType, extensions)

    def _extension_bytes(self) -> bytes | None:
        """The header extensions' bytes, the same for every packet; None if they vary."""
        extensions_map: HeaderExtensionsMap = self._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined]
        mid: str | None = self._RTCRtpSender__mid  # type: ignore[attr-defined]
        serialized = []
        for abs_send_time in (0, 0xFFFFFF):  # what aiortc would set per packet
            packet = RtpPacket()
            packet.extensions.mid = mid
            packet.extensions.abs_send_time = abs_send_time
            serialized.append(packet.serialize(extensions_map))
        if serialized[0] != serialized[1]:
            return None  # abs-send-time negotiated: aiortc's loop computes it per packet
        return serialized[0][_HEADER.size :]

    async def _run_playout(self, track: PlayoutTrack, payload_type: int, extensions: bytes) -> None:
        """Send from the frame clock's tick until the track ends or the task is cancelled.

        The task only waits here: the packets go out from :meth:`_on_tick`,
        which the loop's :class:`~gateway.media.frameclock.FrameClock` calls
        every 20 ms (and once right away, so the first frame goes at once).
        """
        self._RTCRtpSender__rtp_started.set()  # type: ignore[attr-defined]
        has_extensions = 0x10 if extensions else 0
        self._first_byte = 0x80 | has_extensions  # version 2, no padding, no CSRC
        self._second_byte = 0x80 | payload_type  # marker: every audio frame is one packet
        self._extensions = extensions
        self._playing = track
        # Random starting points, as aiortc's (its sequence numbers start below 2**15).
        self._sequence_number = random_sequence_number()
        self._timestamp_origin = random32()
        self._packets = self._octets = 0
        loop = asyncio.get_running_loop()
        self._ended = loop.create_future()
        clock = frame_clock(loop)
        clock.subscribe(self._on_tick)
        try:
            await self._ended
        except asyncio.CancelledError:
            pass
        finally:
            clock.unsubscribe(self._on_tick)
        if self.track is not None:
            self.track.stop()
            self._RTCRtpSender__track = None
        self._RTCRtpSender__rtp_exited.set()  # type: ignore[attr-defined]

    def _on_tick(self, now: float) -> None:
        """Send every frame of the track that is due at ``now`` (one, unless the loop stalled)."""
        try:
            track = self.track
            if track is not self._playing:  # replaceTrack()
                if not isinstance(track, PlayoutTrack):
                    return  # nothing to send until a PlayoutTrack comes back
                self._playing = track
            while (frame := track.poll(now)) is not None:
                if self._enabled:
                    self._send(*frame)
        except (ConnectionError, MediaStreamError):
            self._end()  # the transport closed, or the track ended: the call is ending
        except Exception:
            # aiortc's stop() waits for the loop's exit: always reach it.
            logger.exception("RTP sender failed")
            self._end()

    def _send(self, payload: bytes, pts: int) -> None:
        timestamp = (self._timestamp_origin + pts) & 0xFFFFFFFF
        sequence_number = self._sequence_number
        header = _HEADER.pack(
            self._first_byte, self._second_byte, sequence_number, timestamp, self._ssrc
        )
        transport: CallTransport = self.transport  # type: ignore[assignment]
        transport.send_rtp_now(header + self._extensions + payload)
        self._sequence_number = (sequence_number + 1) & 0xFFFF
        # What the next RTCP sender report says (aiortc reads these fields).
        self._packets += 1
        self._octets += len(payload)
        self._RTCRtpSender__ntp_timestamp = int((time.time() + _NTP_UNIX_OFFSET) * _NTP_SCALE)
        self._RTCRtpSender__rtp_timestamp = timestamp
        self._RTCRtpSender__packet_count = self._packets
        self._RTCRtpSender__octet_count = self._octets

    def _end(self) -> None:
        frame_clock(asyncio.get_running_loop()).unsubscribe(self._on_tick)
        if not self._ended.done():
            self._ended.set_result(None)
