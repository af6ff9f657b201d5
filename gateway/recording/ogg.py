"""A minimal Ogg Opus writer (RFC 3533, RFC 7845) for two-channel recordings made of
two mono Opus streams, without decoding or encoding anything.

A call's caller side and bot side are each a mono Opus stream. RFC 7845's
channel mapping family 1 lets one Ogg Opus file carry both as two uncoupled
streams of one multistream packet per 20 ms: stream 0 plays on the left,
stream 1 on the right. Every stream but the last is put in the self-delimiting
framing of RFC 6716 Appendix B; the packets themselves are kept byte for byte.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import BinaryIO, Final

_REVERSED: Final = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_PACKETS_PER_PAGE: Final = 50  # one second of 20 ms packets per page


def ogg_crc(data: bytes) -> int:
    """Ogg's page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, no init, no xor-out.

    zlib's CRC-32 is the reflected form of the same polynomial with init and xor-out
    0xFFFFFFFF; reversing the bits of every byte and of the result, and taking out the
    init's contribution (the CRC of as many zero bytes), turns one into the other in C.
    """
    flipped = data.translate(_REVERSED)
    raw = zlib.crc32(flipped) ^ zlib.crc32(bytes(len(data)))
    return int(f"{raw:032b}"[::-1], 2)


def _length(n: int) -> bytes:
    """A frame length as RFC 6716 codes it (one byte below 252, else two)."""
    if n < 252:
        return bytes((n,))
    first = 252 + (n & 3)
    return bytes((first, (n - first) >> 2))


def _read_length(packet: bytes, at: int) -> tuple[int, int]:
    first = packet[at]
    if first < 252:
        return first, at + 1
    return first + 4 * packet[at + 1], at + 2


def self_delimited(packet: bytes) -> bytes:
    """The same Opus packet in self-delimiting framing (RFC 6716 Appendix B).

    Raises ValueError (or IndexError) for a malformed packet.
    """
    if not packet:
        raise ValueError("empty Opus packet")
    toc = packet[0]
    code = toc & 3
    if code == 0:
        return packet[:1] + _length(len(packet) - 1) + packet[1:]
    if code == 1:
        if (len(packet) - 1) % 2:
            raise ValueError("code 1 Opus packet with an odd payload")
        return packet[:1] + _length((len(packet) - 1) // 2) + packet[1:]
    if code == 2:
        n1, at = _read_length(packet, 1)
        n2 = len(packet) - at - n1
        if n2 < 0:
            raise ValueError("code 2 Opus packet shorter than its first frame")
        return packet[:at] + _length(n2) + packet[at:]
    # Code 3: count byte, optional padding lengths, VBR lengths of all frames but the last.
    count_byte = packet[1]
    frames = count_byte & 0x3F
    vbr, padded = count_byte & 0x80, count_byte & 0x40
    if frames == 0:
        raise ValueError("code 3 Opus packet with 0 frames")
    at, padding = 2, 0
    while padded:
        step = packet[at]
        at += 1
        padding += 254 if step == 255 else step
        padded = step == 255
    data = len(packet) - at - padding
    if vbr:
        sizes = []
        for _ in range(frames - 1):
            size, at = _read_length(packet, at)
            sizes.append(size)
        last = len(packet) - padding - at - sum(sizes)
        if last < 0:
            raise ValueError("code 3 Opus packet shorter than its frames")
        return packet[:at] + _length(last) + packet[at:]
    if data < 0 or data % frames:
        raise ValueError("code 3 CBR Opus packet does not divide into its frames")
    return packet[:at] + _length(data // frames) + packet[at:]


def multistream_packet(streams: list[bytes]) -> bytes:
    """One Opus multistream packet from one packet per stream (same duration each)."""
    return b"".join([*(self_delimited(p) for p in streams[:-1]), streams[-1]])


def opus_head(streams: int, *, pre_skip: int = 0, input_rate: int = 48000) -> bytes:
    """The ID header for ``streams`` uncoupled mono streams on as many channels (family 1)."""
    return (
        b"OpusHead"
        + struct.pack("<BBHIhB", 1, streams, pre_skip, input_rate, 0, 1)
        + bytes((streams, 0))
        + bytes(range(streams))
    )


def opus_tags(vendor: str, comments: Iterable[str] = ()) -> bytes:
    """The comment header."""
    items = [c.encode() for c in comments]
    out = b"OpusTags" + struct.pack("<I", len(vendor.encode())) + vendor.encode()
    out += struct.pack("<I", len(items))
    for item in items:
        out += struct.pack("<I", len(item)) + item
    return out


class OggWriter:
    """Writes one logical Ogg stream (packets with granule positions) to a file."""

    def __init__(self, out: BinaryIO, serial: int) -> None:
        self._out = out
        self._serial = serial
        self._sequence = 0
        self._first = True

    def page(self, packets: list[bytes], granule: int, *, last: bool = False) -> None:
        """Write ``packets`` (each whole) on one page ending at ``granule``."""
        lacing = bytearray()
        for packet in packets:
            lacing += b"\xff" * (len(packet) // 255) + bytes((len(packet) % 255,))
        if len(lacing) > 255:
            raise ValueError("too many segments for one Ogg page")
        flags = (0x02 if self._first else 0) | (0x04 if last else 0)
        header = struct.pack(
            "<4sBBqIIIB", b"OggS", 0, flags, granule, self._serial, self._sequence, 0, len(lacing)
        )
        page = header + bytes(lacing) + b"".join(packets)
        crc = ogg_crc(page)
        self._out.write(page[:22] + struct.pack("<I", crc) + page[26:])
        self._sequence += 1
        self._first = False


def write_opus(
    out: BinaryIO,
    packets: Iterable[bytes],
    *,
    streams: int,
    serial: int,
    comments: Iterable[str] = (),
    samples_per_packet: int = 960,
) -> int:
    """Write an Ogg Opus file of multistream ``packets``; returns the number of packets."""
    writer = OggWriter(out, serial)
    writer.page([opus_head(streams)], 0)
    writer.page([opus_tags("wa-voice-gateway", comments)], 0)
    page: list[bytes] = []
    segments = 0
    written = 0
    for packet in packets:
        need = len(packet) // 255 + 1
        if page and (len(page) >= _PACKETS_PER_PAGE or segments + need > 255):
            writer.page(page, written * samples_per_packet)
            page, segments = [], 0
        page.append(packet)
        segments += need
        written += 1
    writer.page(page, written * samples_per_packet, last=True)
    return written
