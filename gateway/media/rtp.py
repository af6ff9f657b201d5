"""The RTP fixed header (RFC 3550 5.1) and NTP time, as the Python paths of the media code
read and write them (the compiled path, ``_rtp.c``, has its own in C)."""

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
