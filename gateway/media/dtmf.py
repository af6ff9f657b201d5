"""DTMF as RFC 4733 telephone events: parse, detect, encode, send.

WhatsApp carries key presses only in-band, as ``telephone-event/8000`` RTP
packets on payload type 126 that share the audio stream's SSRC and sequence
numbers. One key press is a run of packets with the same RTP timestamp (the
event's start) and a growing duration, ending with the "end" bit set, and that
last packet is sent three times.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiortc import RTCRtpSender
from aiortc.codecs import CODECS
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket, is_rtcp

from gateway.errors import CallError

DTMF_PAYLOAD_TYPE: Final = 126
DTMF_CLOCK_RATE: Final = 8000
PACKET_MS: Final = 20

_DIGITS: Final = "0123456789*#ABCD"  # event codes 0-15 (RFC 4733 3.2)
_TICKS_PER_PACKET: Final = DTMF_CLOCK_RATE * PACKET_MS // 1000
_END_REPEATS: Final = 3


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """One telephone-event payload."""

    digit: str
    end: bool
    volume: int
    """Power level in -dBm0 (0 is loudest, 63 quietest)."""
    duration: int
    """Duration so far, in RTP timestamp units (8 kHz)."""


def parse_event(payload: bytes) -> DtmfEvent:
    """Parse a telephone-event payload; raises ValueError if it is short or not a DTMF key."""
    if len(payload) < 4:
        raise ValueError(f"telephone-event payload of {len(payload)} bytes, need 4")
    event, flags, duration = struct.unpack_from("!BBH", payload)
    if event >= len(_DIGITS):
        raise ValueError(f"telephone event {event} is not a DTMF key")
    return DtmfEvent(
        digit=_DIGITS[event], end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration
    )


def encode_event(digit: str, *, end: bool, volume: int, duration: int) -> bytes:
    """The 4-byte telephone-event payload for a key."""
    return struct.pack("!BBH", _DIGITS.index(digit), (0x80 if end else 0) | volume, duration)


def encode_digit(
    digit: str, duration_ms: int = 160, volume: int = 10
) -> list[tuple[bytes, bool, int]]:
    """The packets a sender emits for one key press, one every 20 ms.

    Each item is (payload, marker, duration so far in 8 kHz units). The first
    packet carries the marker bit; the last, with the full duration and the end
    bit, is repeated three times as RFC 4733 2.5.1.4 asks.
    """
    if len(digit) != 1 or digit not in _DIGITS:
        raise ValueError(f"not a DTMF key: {digit!r}")
    if not 0 <= volume <= 63:
        raise ValueError(f"volume must be 0-63 (-dBm0), got {volume}")
    total = duration_ms * DTMF_CLOCK_RATE // 1000
    if duration_ms < PACKET_MS or total > 0xFFFF:
        raise ValueError(f"duration must be {PACKET_MS}-8191 ms, got {duration_ms}")
    packets: list[tuple[bytes, bool, int]] = []
    duration = _TICKS_PER_PACKET
    while duration < total:
        payload = encode_event(digit, end=False, volume=volume, duration=duration)
        packets.append((payload, not packets, duration))
        duration += _TICKS_PER_PACKET
    end = encode_event(digit, end=True, volume=volume, duration=total)
    packets.extend((end, not packets and i == 0, total) for i in range(_END_REPEATS))
    return packets


class DtmfDetector:
    """Turns telephone-event packets into key presses, each reported exactly once.

    A key press is identified by its event's RTP timestamp: its repeated
    packets and its redundant end packets are ignored once it was reported. A
    press whose end packets were all lost is reported when the next one starts,
    or by :meth:`flush`.
    """

    def __init__(
        self, on_key: Callable[[str, int], None], clock_rate: int = DTMF_CLOCK_RATE
    ) -> None:
        self.on_key = on_key
        """Called with (digit, duration in ms)."""
        self._clock_rate = clock_rate
        self._current: int | None = None  # RTP timestamp of the press in progress
        self._digit = ""
        self._duration = 0
        # Presses already reported; a few, for end packets reordered behind a new press.
        self._reported: deque[int] = deque(maxlen=8)

    def feed(self, timestamp: int, payload: bytes) -> None:
        """Feed one packet; raises ValueError if the payload is invalid."""
        event = parse_event(payload)
        if timestamp in self._reported:
            return
        if timestamp != self._current:
            self.flush()
            self._current = timestamp
            self._digit = event.digit
            self._duration = 0
        self._duration = max(self._duration, event.duration)
        if event.end:
            self.flush()

    def flush(self) -> None:
        """Report the press in progress, if any, even though its end was not seen."""
        if self._current is None:
            return
        self._reported.append(self._current)
        self._current = None
        self.on_key(self._digit, self._duration * 1000 // self._clock_rate)


def add_telephone_event_codec(payload_type: int = DTMF_PAYLOAD_TYPE) -> None:
    """Make aiortc offer and accept ``telephone-event/8000`` (idempotent).

    aiortc only negotiates codecs it can encode, so it drops telephone-event
    from its answers; its RTP router then discards every DTMF packet, since it
    routes only payload types that were negotiated. Listing the codec after the
    real audio codecs keeps it in offers and answers, and it is never the first
    (sending) codec, so aiortc never looks for an encoder for it. Its decoder
    thread would fail on such packets, so receive them with
    :class:`~gateway.media.inbound.InboundAudio`, which takes them first.
    """
    audio = CODECS["audio"]
    if any(c.mimeType.lower() == "audio/telephone-event" for c in audio):
        return
    audio.append(
        RTCRtpCodecParameters(
            mimeType="audio/telephone-event", clockRate=DTMF_CLOCK_RATE, payloadType=payload_type
        )
    )


class DtmfSender:
    """Sends key presses as RFC 4733 packets on an audio :class:`RTCRtpSender`'s stream.

    The packets must use the audio stream's SSRC and its sequence numbers, and
    aiortc keeps the next sequence number to itself. Numbering them on our own
    would collide with the audio's, and SRTP then fails: the receiver drops
    replayed indices, and the sender's own ``protect`` fails on indices behind
    its window, which ends aiortc's RTP loop for good. So, as browsers do, the
    event packets take the place of the audio packets while a key is "down":
    each outgoing audio packet of the stream is swapped for the next event
    packet, keeping its sequence number; the event's RTP timestamp is that of
    the first packet replaced. This needs the track to send every 20 ms, which
    :class:`~gateway.media.playout.PlayoutTrack` always does.
    """

    def __init__(self, sender: RTCRtpSender, payload_type: int = DTMF_PAYLOAD_TYPE) -> None:
        self._sender = sender
        self._payload_type = payload_type
        self._lock = asyncio.Lock()
        self._pending: deque[tuple[bytes, bool, int]] = deque()
        self._event_timestamp: int | None = None
        self._done: asyncio.Future[None] | None = None
        self._ssrc = sender._ssrc

    async def send(
        self, digits: str, duration_ms: int = 160, gap_ms: int = 80, volume: int = 10
    ) -> None:
        """Send several keys, ``gap_ms`` apart."""
        for i, digit in enumerate(digits):
            if i:
                await asyncio.sleep(gap_ms / 1000)
            await self.send_digit(digit, duration_ms, volume)

    async def send_digit(self, digit: str, duration_ms: int = 160, volume: int = 10) -> None:
        """Send one key press; returns when its last packet went out.

        Raises :class:`~gateway.errors.CallError` if the audio stream stopped
        sending packets to replace.
        """
        packets = encode_digit(digit, duration_ms, volume)
        async with self._lock:
            transport = self._sender.transport
            self._pending.extend(packets)
            self._event_timestamp = None
            self._done = asyncio.get_running_loop().create_future()
            _intercept_rtp(transport, self._substitute)
            try:
                timeout = len(packets) * PACKET_MS / 1000 + 1.0
                async with asyncio.timeout(timeout):
                    await self._done
            except TimeoutError:
                raise CallError(
                    f"DTMF {digit!r} not sent: the audio stream sent no packets to replace"
                ) from None
            finally:
                _release_rtp(transport)
                self._pending.clear()

    def _substitute(self, data: bytes) -> bytes:
        """Swap an outgoing audio packet of our stream for the next event packet."""
        if not self._pending or is_rtcp(data) or len(data) < 12:
            return data
        sequence_number, timestamp, ssrc = struct.unpack_from("!HII", data, 2)
        if ssrc != self._ssrc:
            return data
        if self._event_timestamp is None:
            self._event_timestamp = timestamp
        payload, marker, _ = self._pending.popleft()
        packet = RtpPacket(
            payload_type=self._payload_type,
            marker=int(marker),
            sequence_number=sequence_number,
            timestamp=self._event_timestamp,
            ssrc=self._ssrc,
            payload=payload,
        )
        if not self._pending and self._done is not None and not self._done.done():
            self._done.set_result(None)
        return packet.serialize()


def _intercept_rtp(transport: RTCDtlsTransport, rewrite: Callable[[bytes], bytes]) -> None:
    """Pass every packet ``transport`` sends through ``rewrite`` first.

    The one place that reaches into aiortc: it shadows the transport's
    ``_send_rtp`` coroutine with an instance attribute, which aiortc's senders
    call through, and sets ``rtp_rewrite``, which a
    :class:`~gateway.media.transport.CallTransport` applies to what the
    gateway's :class:`~gateway.media.sender.PlayoutSender` sends;
    :func:`_release_rtp` removes both again.
    """
    original = transport._send_rtp

    async def send_rtp(data: bytes) -> None:
        await original(rewrite(data))

    transport._send_rtp = send_rtp  # type: ignore[method-assign]
    transport.rtp_rewrite = rewrite  # type: ignore[attr-defined]


def _release_rtp(transport: RTCDtlsTransport) -> None:
    transport.__dict__.pop("_send_rtp", None)
    transport.rtp_rewrite = None  # type: ignore[attr-defined]  # CallTransport's is a property
