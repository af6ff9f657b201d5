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

On the wire nothing changes: same SSRC, random initial sequence number and
timestamp, marker bit on every packet (aiortc marks the last packet of each
frame, and an audio frame is one packet), same extensions, and the same RTCP
sender reports (packet and octet counts, RTP and NTP time of the last packet).
The packets still go through the DTLS transport's ``_send_rtp`` (SRTP, and the
DTMF sender's substitution). Anything else (another kind of track, NACK
negotiated, a header extension that changes per packet) runs aiortc's own loop.

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

from gateway.media.playout import PlayoutTrack

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
        self._RTCRtpSender__rtp_started.set()  # type: ignore[attr-defined]
        has_extensions = 0x10 if extensions else 0
        first_byte = 0x80 | has_extensions  # version 2, no padding, no CSRC
        second_byte = 0x80 | payload_type  # marker: every audio frame is one packet
        ssrc = self._ssrc
        pack = _HEADER.pack
        # Random starting points, as aiortc's (its sequence numbers start below 2**15).
        sequence_number = random_sequence_number()
        timestamp_origin = random32()
        packets = octets = 0
        try:
            while True:
                if self.track is not track:  # replaceTrack()
                    if not isinstance(self.track, PlayoutTrack):
                        await asyncio.sleep(0.02)
                        continue
                    track = self.track
                payload, pts = await track.next_payload()
                if not self._enabled:
                    continue
                timestamp = (timestamp_origin + pts) & 0xFFFFFFFF
                data = pack(first_byte, second_byte, sequence_number, timestamp, ssrc)
                await self.transport._send_rtp(data + extensions + payload)
                # What the next RTCP sender report says (aiortc reads these fields).
                packets += 1
                octets += len(payload)
                self._RTCRtpSender__ntp_timestamp = ntp_time(time.time())
                self._RTCRtpSender__rtp_timestamp = timestamp
                self._RTCRtpSender__packet_count = packets
                self._RTCRtpSender__octet_count = octets
                sequence_number = (sequence_number + 1) & 0xFFFF
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # aiortc's stop() waits for the loop's exit event: always reach it.
            logger.exception("RTP sender loop failed")
        if self.track is not None:
            self.track.stop()
            self._RTCRtpSender__track = None
        self._RTCRtpSender__rtp_exited.set()  # type: ignore[attr-defined]
