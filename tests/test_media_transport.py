"""CallTransport's RTP reading agrees with aiortc's parser on every field the gateway reads."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aioice.ice
import aioice.stun
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCDtlsTransport, RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtcpByePacket, RtpPacket
from numpy.typing import NDArray

from gateway.media import native
from gateway.media.audio import FRAME_SAMPLES
from gateway.media.native import NativeStreamStatistics
from gateway.media.opus import OpusDecoder, OpusEncoder
from gateway.media.transport import CallTransport, parse_inbound

from .peers import answer_with_inbound, connected

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


# --- a real aiortc peer over loopback: the synchronous receive path -------------------


def speech_packets(count: int) -> list[bytes]:
    encoder = OpusEncoder()
    t = np.arange(count * FRAME_SAMPLES) / 16000
    tone = (8000 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.int16)
    return [encoder.encode(tone[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i in range(count)]


@pytest.mark.usefixtures("loopback")
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
async def test_rtp_from_a_real_peer_reaches_inbound_audio_without_aioices_queue(
    monkeypatch: pytest.MonkeyPatch, compiled: bool
) -> None:
    """Header extensions, padding, CSRCs, reordering, RTCP in between and an SSRC
    change, SRTP-protected by a real aiortc peer: every frame decodes as a decoder
    fed the same packets in order would, no RTP packet
    went through aioice's queue (nor did RTCP: a BYE is read in the socket's callback),
    and ICE consent checks (STUN, which takes aioice's
    own path) keep both sides connected."""
    # Consent checks every ~50 ms, each failing after 100 ms without an answer
    # (aioice: 5 s and 0.5 s): six failures in a row would close the connection.
    if not compiled:  # as without the extension built
        monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.05)
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 0.1)
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    gateway = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        caller.addTransceiver("audio", direction="sendrecv")  # no track: sends nothing itself
        await caller.setLocalDescription(await caller.createOffer())
        await gateway.setRemoteDescription(caller.localDescription)
        receiver = gateway.getTransceivers()[0].receiver
        transport = CallTransport.adopt(receiver.transport)
        frames: list[NDArray[np.int16]] = []
        inbound = await answer_with_inbound(gateway, receiver, frames)
        pt = inbound.opus_pt

        # What aioice queues for aiortc's task from now on (STUN, DTLS, RTCP; no RTP).
        connection = transport.transport._connection
        queued: list[bytes] = []
        aioice_data_received = connection.data_received

        def data_received(data: bytes, component: int) -> None:
            queued.append(data)
            aioice_data_received(data, component)

        connection.data_received = data_received  # type: ignore[method-assign]
        stun_requests: list[object] = []
        aioice_request_received = connection.request_received

        def request_received(*args: Any) -> None:
            stun_requests.append(args[0])
            aioice_request_received(*args)

        connection.request_received = request_received  # type: ignore[method-assign]
        rtcp_seen: list[bytes] = []
        aiortc_rtcp = transport._handle_rtcp_data

        async def handle_rtcp(data: bytes) -> None:
            rtcp_seen.append(data)
            await aiortc_rtcp(data)

        transport._handle_rtcp_data = handle_rtcp  # type: ignore[method-assign]

        await caller.setRemoteDescription(gateway.localDescription)
        await connected(caller)
        await connected(gateway)
        send = caller.getTransceivers()[0].sender.transport._send_rtp
        queued.clear()

        payloads = speech_packets(20)
        m = extensions_map()
        order = [0, 1, 2, 3, 5, 4, 6, 7, 8, 9]  # one pair swapped on the way
        for n, i in enumerate(order):
            p = RtpPacket(
                payload_type=pt,
                marker=int(i == 0),
                sequence_number=100 + i,
                timestamp=5000 + 960 * i,
                ssrc=0x1111,
                payload=payloads[i],
            )
            p.padding_size = 4 if i % 3 == 0 else 0
            p.csrc = [0xABC, 0xDEF] if i % 4 == 1 else []
            p.extensions.audio_level = (True, 30)
            p.extensions.abs_send_time = 1234 * i
            p.extensions.transport_sequence_number = 7 + i
            await send(p.serialize(m))
            if n == 3:
                await send(bytes(RtcpByePacket(sources=[0x1111])))
        # A new SSRC and timeline (a restarted stream).
        for i in range(10, 20):
            p = RtpPacket(
                payload_type=pt,
                sequence_number=9000 + i,
                timestamp=3_000_000 + 960 * i,
                ssrc=0x2222,
                payload=payloads[i],
            )
            await send(p.serialize(m))
        for _ in range(100):
            if len(frames) >= 20 and receiver._RTCRtpReceiver__decoder_thread is None:
                break
            await asyncio.sleep(0.01)

        decoder = OpusDecoder()
        expected = [decoder.decode(p) for p in payloads]
        assert len(frames) == 20
        for got, want in zip(frames, expected, strict=True):
            assert np.array_equal(got, want)
        stats = inbound.stats
        assert (stats.packets, stats.lost, stats.late, stats.concealed) == (20, 0, 0, 0)
        assert stats.discontinuities == 1
        # The BYE did what aiortc's receiver does with one (its decoder thread stops),
        # read where it arrived: not through aiortc's task, nor aioice's queue.
        assert receiver._RTCRtpReceiver__decoder_thread is None
        assert not rtcp_seen
        assert not [d for d in queued if 127 < d[0] < 192]
        # Both SSRCs feed RTCP reception statistics, as aiortc's own receiver would.
        streams = receiver._RTCRtpReceiver__remote_streams
        assert {0x1111, 0x2222} <= set(streams)
        first = streams[0x1111]
        assert (first.base_seq, first.max_seq, first.cycles, first.packets_received) == (
            100,
            109,
            0,
            10,
        )
        assert (first.packets_expected, first.packets_lost) == (10, 0)
        # The compiled path took the in-order packets of the first stream itself.
        wire = transport._native_in
        if compiled:
            assert wire is not None and isinstance(first, NativeStreamStatistics)
            assert wire.fast_packets >= 5 and wire.auth_failures == wire.malformed == 0
        else:
            assert wire is None and not isinstance(first, NativeStreamStatistics)
        assert transport._RTCDtlsTransport__rx_packets >= 20

        stun_requests.clear()
        await asyncio.sleep(1.0)
        assert len(stun_requests) >= 5  # the caller's consent checks reached aioice
        assert (caller.connectionState, gateway.connectionState) == ("connected", "connected")
    finally:
        await caller.close()
        await gateway.close()
    assert not any("datagram_received" in p.__dict__ for p in transport._fast_protocols)
    assert transport._fast_protocols == []
