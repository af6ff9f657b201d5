"""RFC 4733 telephone events: payloads, detection, sending, negotiation."""

from __future__ import annotations

import asyncio
import re
from typing import cast

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs import CODECS
from aiortc.rtp import RtcpByePacket, RtpPacket

from gateway.errors import CallError
from gateway.media.dtmf import (
    DtmfDetector,
    DtmfEvent,
    DtmfSender,
    add_telephone_event_codec,
    encode_digit,
    parse_event,
)
from gateway.media.playout import PlayoutTrack

from .contract import meta_offer

# --- payloads -----------------------------------------------------------------------


def test_parse_event() -> None:
    # Key "1", end bit, volume 10 (-10 dBm0), 1280 ticks = 160 ms at 8 kHz.
    assert parse_event(b"\x01\x8a\x05\x00") == DtmfEvent("1", end=True, volume=10, duration=1280)
    assert parse_event(b"\x0b\x0a\x00\xa0") == DtmfEvent("#", end=False, volume=10, duration=160)
    digits = "".join(parse_event(bytes([code, 0, 0, 0])).digit for code in range(16))
    assert digits == "0123456789*#ABCD"


@pytest.mark.parametrize("payload", [b"", b"\x01\x8a\x05", bytes([16, 0, 0, 0]), b"\xff" * 4])
def test_parse_event_refuses_invalid_payloads(payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse_event(payload)


def test_encode_digit_packets() -> None:
    packets = encode_digit("7", duration_ms=160, volume=10)
    assert len(packets) == 7 + 3
    assert [marker for _, marker, _ in packets] == [True] + [False] * 9
    assert [duration for _, _, duration in packets] == [160 * k for k in range(1, 8)] + [1280] * 3
    events = [parse_event(payload) for payload, _, _ in packets]
    assert {e.digit for e in events} == {"7"}
    assert {e.volume for e in events} == {10}
    assert [e.end for e in events] == [False] * 7 + [True] * 3
    assert [e.duration for e in events] == [duration for _, _, duration in packets]


def test_encode_shortest_digit() -> None:
    packets = encode_digit("#", duration_ms=20)
    assert [(m, d) for _, m, d in packets] == [(True, 160), (False, 160), (False, 160)]
    assert all(parse_event(p).end for p, _, _ in packets)


@pytest.mark.parametrize(
    ("digit", "duration_ms", "volume"),
    [
        ("E", 160, 10),
        ("12", 160, 10),
        ("", 160, 10),
        ("1", 10, 10),
        ("1", 9000, 10),
        ("1", 160, 64),
    ],
)
def test_encode_digit_refuses(digit: str, duration_ms: int, volume: int) -> None:
    with pytest.raises(ValueError):
        encode_digit(digit, duration_ms, volume)


# --- detection ------------------------------------------------------------------------


def detector() -> tuple[DtmfDetector, list[tuple[str, int]]]:
    keys: list[tuple[str, int]] = []
    return DtmfDetector(lambda digit, ms: keys.append((digit, ms))), keys


def test_each_press_is_reported_once_with_its_duration() -> None:
    d, keys = detector()
    for timestamp, digit, ms in ((1000, "1", 160), (50000, "2", 100), (90000, "#", 300)):
        for payload, _, _ in encode_digit(digit, ms):
            d.feed(timestamp, payload)
            d.feed(timestamp, payload)  # every packet twice
    assert keys == [("1", 160), ("2", 100), ("#", 300)]


def test_same_digit_twice_is_two_presses() -> None:
    d, keys = detector()
    for timestamp in (1000, 20000):
        for payload, _, _ in encode_digit("5"):
            d.feed(timestamp, payload)
    assert keys == [("5", 160), ("5", 160)]


def test_press_without_end_packets_is_reported_when_the_next_starts() -> None:
    d, keys = detector()
    for payload, _, _ in encode_digit("9")[:-3]:  # all three end packets lost
        d.feed(1000, payload)
    assert keys == []
    first, _, _ = encode_digit("4")[0]
    d.feed(30000, first)
    assert keys == [("9", 140)]
    d.flush()
    assert keys == [("9", 140), ("4", 20)]
    d.flush()
    assert len(keys) == 2


def test_end_packets_reordered_behind_the_next_press_are_ignored() -> None:
    d, keys = detector()
    one = encode_digit("1")
    two = encode_digit("2")
    for payload, _, _ in one[:-2]:
        d.feed(1000, payload)
    d.feed(9000, two[0][0])
    for payload, _, _ in one[-2:]:  # the redundant end packets of "1", late
        d.feed(1000, payload)
    for payload, _, _ in two[1:]:
        d.feed(9000, payload)
    assert keys == [("1", 160), ("2", 160)]


def test_detector_refuses_invalid_payloads() -> None:
    d, keys = detector()
    with pytest.raises(ValueError):
        d.feed(1000, b"\x01")
    assert keys == []


# --- negotiation ----------------------------------------------------------------------


def test_add_telephone_event_codec_is_idempotent() -> None:
    add_telephone_event_codec()
    add_telephone_event_codec()
    audio = CODECS["audio"]
    events = [c for c in audio if c.mimeType.lower() == "audio/telephone-event"]
    assert len(events) == 1
    assert (events[0].clockRate, events[0].payloadType) == (8000, 126)
    assert audio[0].mimeType.lower() == "audio/opus"  # still the codec aiortc sends with


@pytest.mark.usefixtures("loopback")
async def test_answer_to_meta_offer_keeps_telephone_event() -> None:
    add_telephone_event_codec()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTrack(PlayoutTrack())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=meta_offer(), type="offer"))
        answer = await pc.createAnswer()
        assert re.search(r"^m=audio \d+ UDP/TLS/RTP/SAVPF 111 126\r$", answer.sdp, re.M)
        assert "a=rtpmap:111 opus/48000/2" in answer.sdp
        assert "a=rtpmap:126 telephone-event/8000" in answer.sdp
    finally:
        await pc.close()


@pytest.mark.usefixtures("loopback")
async def test_offer_lists_telephone_event_after_the_audio_codecs() -> None:
    add_telephone_event_codec()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTrack(PlayoutTrack())
        offer = await pc.createOffer()
        formats = re.search(r"^m=audio \d+ \S+ ([\d ]+)\r$", offer.sdp, re.M)
        assert formats is not None
        assert formats.group(1).split()[-1] == "126"
        assert formats.group(1).split()[0] != "126"
        assert "a=rtpmap:126 telephone-event/8000" in offer.sdp
    finally:
        await pc.close()


# --- sending --------------------------------------------------------------------------

SSRC = 0x11223344


class FakeTransport:
    """Records what is sent, as RTCDtlsTransport._send_rtp would."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)


class FakeSender:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self._ssrc = SSRC


def audio(seq: int, timestamp: int, ssrc: int = SSRC) -> bytes:
    packet = RtpPacket(
        payload_type=111, sequence_number=seq, timestamp=timestamp, ssrc=ssrc, payload=b"\x48opus"
    )
    return packet.serialize()


async def test_sender_replaces_audio_packets_and_keeps_their_numbers() -> None:
    transport = FakeTransport()
    dtmf = DtmfSender(cast(RTCRtpSender, FakeSender(transport)))
    task = asyncio.create_task(dtmf.send_digit("5", duration_ms=160))
    await asyncio.sleep(0)

    expected = []
    seq, timestamp = 65530, 0xFFFFF000  # both wrap around during the press
    for i in range(14):
        packet = audio((seq + i) & 0xFFFF, (timestamp + 960 * i) & 0xFFFFFFFF)
        expected.append(packet)
        await transport._send_rtp(packet)
        if i == 3:
            other = audio(7, 7, ssrc=0x55)  # another stream on the transport
            rtcp = bytes(RtcpByePacket(sources=[SSRC]))
            await transport._send_rtp(other)
            await transport._send_rtp(rtcp)
    await asyncio.wait_for(task, 1)

    ours = [RtpPacket.parse(p) for p in transport.sent if p not in (other, rtcp)]
    assert other in transport.sent and rtcp in transport.sent
    events, after = ours[:10], ours[10:]
    assert [p.payload_type for p in events] == [126] * 10
    assert [p.sequence_number for p in events] == [(seq + i) & 0xFFFF for i in range(10)]
    assert {p.timestamp for p in events} == {timestamp}
    assert {p.ssrc for p in events} == {SSRC}
    assert [p.marker for p in events] == [1] + [0] * 9
    assert [p.payload for p in events] == [payload for payload, _, _ in encode_digit("5")]
    # Afterwards the audio passes untouched and nothing is left patched.
    assert [p.serialize() for p in after] == expected[10:]
    assert "_send_rtp" not in transport.__dict__


async def test_sender_gives_up_if_the_stream_is_silent() -> None:
    transport = FakeTransport()
    dtmf = DtmfSender(cast(RTCRtpSender, FakeSender(transport)))
    with pytest.raises(CallError):
        await dtmf.send_digit("1", duration_ms=20)
    assert "_send_rtp" not in transport.__dict__
    assert transport.sent == []
