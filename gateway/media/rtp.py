"""The RTP fixed header (RFC 3550 5.1) and NTP time, as the Python paths of the media code
read and write them (the compiled path, ``csrc/rtp.c``, has its own in C), and the reader of
a received packet's header and payload (:func:`parse_inbound`)."""

from __future__ import annotations

import struct
from typing import Final

HEADER: Final = struct.Struct("!BBHII")
"""First byte, second byte (marker and payload type), sequence number, timestamp, SSRC."""

NTP_UNIX_OFFSET: Final = 2208988800
"""Seconds from 1900 (NTP's epoch, which aiortc's arrival times and reports use) to 1970."""


def ntp_time(unix_seconds: float) -> int:
    """64-bit NTP timestamp (RFC 3550 4) of a Unix time."""
    return int((unix_seconds + NTP_UNIX_OFFSET) * (1 << 32))


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
    if len(data) < HEADER.size:
        raise ValueError("RTP packet length is less than 12 bytes")
    first, second, sequence_number, timestamp, ssrc = HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise ValueError("RTP packet has invalid version")
    start = HEADER.size + 4 * (first & 0x0F)  # CSRCs
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
