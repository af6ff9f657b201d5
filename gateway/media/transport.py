"""The receiving side of a call's DTLS-SRTP transport: RTP headers read only as far as needed.

For every decrypted RTP packet aiortc's :class:`~aiortc.RTCDtlsTransport` builds
an ``RtpPacket``: the fixed header, the CSRC list, and every header extension
decoded into a fresh ``HeaderExtensions`` dataclass. WhatsApp's audio carries
three extensions per packet (audio level, abs-send-time, transport-wide
sequence number, contract section 4) that nothing in the gateway reads. When the
packet is for a receiver whose packets :class:`~gateway.media.inbound.InboundAudio`
takes, :class:`CallTransport` reads the fixed header, skips the CSRCs, the
extension block and the padding by their lengths (RFC 3550 5.1, RFC 8285), and
hands on an :class:`InboundPacket` with the fields InboundAudio reads. SRTP,
routing (by SSRC and payload type, aiortc's own router) and RTCP are unchanged;
packets for any other receiver are parsed by aiortc as before.
"""

from __future__ import annotations

import logging
import struct
from typing import Final

from aiortc import RTCDtlsTransport
from aiortc.rtp import RtpPacket

logger = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("!BBHII")


class InboundPacket:
    """The parts of a received RTP packet the gateway reads (duck-types ``RtpPacket``)."""

    __slots__ = ("marker", "payload", "payload_type", "sequence_number", "ssrc", "timestamp")

    def __init__(
        self,
        payload_type: int,
        marker: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        payload: bytes,
    ) -> None:
        self.payload_type = payload_type
        self.marker = marker
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.payload = payload

    def __repr__(self) -> str:
        return (
            f"InboundPacket(seq={self.sequence_number}, ts={self.timestamp}, "
            f"marker={self.marker}, payload_type={self.payload_type}, "
            f"payload={len(self.payload)} bytes)"
        )


def parse_inbound(data: bytes) -> InboundPacket:
    """Read an RTP packet's header and payload; ValueError if it is malformed."""
    if len(data) < _HEADER.size:
        raise ValueError("RTP packet length is less than 12 bytes")
    first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise ValueError("RTP packet has invalid version")
    start = _HEADER.size + 4 * (first & 0x0F)  # CSRCs
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < start + 4:
            raise ValueError("RTP packet has truncated extension profile / length")
        start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
    end = len(data)
    if first & 0x20:  # padding: its length is the last byte
        end -= data[-1]
    if start > end or (first & 0x20 and data[-1] == 0):
        raise ValueError("RTP packet is truncated or has invalid padding")
    return InboundPacket(
        second & 0x7F, second >> 7, sequence_number, timestamp, ssrc, data[start:end]
    )


class CallTransport(RTCDtlsTransport):
    """An :class:`~aiortc.RTCDtlsTransport` that hands InboundAudio lean packets.

    Use :meth:`adopt` on a transceiver's receiver transport once the remote
    description made it (before media flows).
    """

    @classmethod
    def adopt(cls, transport: RTCDtlsTransport) -> CallTransport:
        """Make aiortc's ``transport`` a CallTransport (the same object); returns it."""
        if not isinstance(transport, cls):
            if type(transport) is not RTCDtlsTransport:
                raise TypeError(f"cannot adopt a {type(transport).__name__}")
            transport.__class__ = cls
        assert isinstance(transport, cls)
        return transport

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        try:
            packet = parse_inbound(data)
        except ValueError as exc:
            logger.debug("x RTP parsing failed: %s", exc)
            return
        receiver = self._rtp_router.route_rtp(packet)  # type: ignore[arg-type]
        if receiver is None:
            return
        if "_handle_rtp_packet" in receiver.__dict__:  # taken by an InboundAudio
            await receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)  # type: ignore[arg-type]
            return
        # aiortc's own receiver reads header extensions: give it its full packet.
        try:
            full = RtpPacket.parse(data, self._rtp_header_extensions_map)
        except ValueError as exc:
            logger.debug("x RTP parsing failed: %s", exc)
            return
        await receiver._handle_rtp_packet(full, arrival_time_ms=arrival_time_ms)
