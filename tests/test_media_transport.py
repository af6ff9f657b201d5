"""CallTransport's RTP reading agrees with aiortc's parser on every field the gateway reads."""

from __future__ import annotations

import random

import pytest
from aiortc import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from gateway.media.transport import CallTransport, parse_inbound

# The extensions WhatsApp's audio carries (contract, section 4), plus the mid.
EXTENSIONS = [
    (1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
    (3, "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
    (5, "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"),
    (9, "urn:ietf:params:rtp-hdrext:sdes:mid"),
]
FIELDS = ("payload_type", "marker", "sequence_number", "timestamp", "ssrc", "payload")


def extensions_map() -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in EXTENSIONS]
        )
    )
    return m


def packets() -> list[bytes]:
    rng = random.Random(7)
    m = extensions_map()
    out = []
    for i in range(300):
        p = RtpPacket(
            payload_type=rng.choice([111, 126, 0]),
            marker=rng.randint(0, 1),
            sequence_number=rng.randrange(1 << 16),
            timestamp=rng.randrange(1 << 32),
            ssrc=rng.randrange(1 << 32),
            payload=rng.randbytes(rng.randrange(0, 200)),
        )
        p.padding_size = rng.choice([0, 0, 1, 4])
        p.csrc = [rng.randrange(1 << 32) for _ in range(rng.choice([0, 0, 2]))]
        if i % 2:
            p.extensions.audio_level = (True, rng.randrange(128))
            p.extensions.abs_send_time = rng.randrange(1 << 24)
            p.extensions.transport_sequence_number = rng.randrange(1 << 16)
        if i % 5 == 0:
            p.extensions.mid = "audio"
        out.append(p.serialize(m))
    return out


def test_fields_match_aiortcs_parser() -> None:
    m = extensions_map()
    for data in packets():
        ours, theirs = parse_inbound(data), RtpPacket.parse(data, m)
        assert [getattr(ours, f) for f in FIELDS] == [getattr(theirs, f) for f in FIELDS]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x6f\x00\x01",  # shorter than the fixed header
        bytes([0x40, 111]) + bytes(10),  # version 1
        bytes([0x90, 111]) + bytes(10) + b"\xbe\xde",  # extension header cut short
        bytes([0x90, 111]) + bytes(10) + b"\xbe\xde\x00\x09" + bytes(8),  # extension too long
        bytes([0xA0, 111]) + bytes(10) + b"\x01\x02\x00",  # padding length 0
        bytes([0xA0, 111]) + bytes(10) + b"\x01\x09",  # padding longer than the payload
        bytes([0x8F, 111]) + bytes(10) + bytes(8),  # 15 CSRCs announced, 2 present
    ],
)
def test_malformed_packets_are_refused_like_aiortc_does(data: bytes) -> None:
    with pytest.raises(ValueError):
        RtpPacket.parse(data, extensions_map())
    with pytest.raises(ValueError):
        parse_inbound(data)


def test_only_aiortcs_own_transport_is_adopted() -> None:
    class Other(RTCDtlsTransport):
        pass

    with pytest.raises(TypeError):
        CallTransport.adopt(Other.__new__(Other))
