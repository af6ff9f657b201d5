"""PlayoutSender puts exactly the bytes on the wire that aiortc's own sender would."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import (
    RTCRtcpParameters,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpSendParameters,
)

from gateway.media.frameclock import frame_clock
from gateway.media.playout import PlayoutTrack
from gateway.media.rtp import ntp_time
from gateway.media.sender import PlayoutSender

from .virtual_clock import on_virtual_clock

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


class RecordingTransport:
    """Stands in for aiortc's RTCDtlsTransport: keeps what the sender sends, in clear."""

    state = "connected"

    def __init__(self) -> None:
        self.rtp: list[bytes] = []

    def _register_rtp_sender(self, sender: Any, parameters: Any) -> None:
        pass

    def _unregister_rtp_sender(self, sender: Any) -> None:
        pass

    async def _send_rtp(self, data: bytes) -> None:
        """What aiortc's sender calls."""
        self.send_rtp_now(data)

    def send_rtp_now(self, data: bytes) -> None:
        """What PlayoutSender calls (CallTransport's)."""
        if data[1] < 192 or data[1] > 223:  # RTP, not RTCP (RFC 5761)
            self.rtp.append(data)


async def run_sender(
    lean: bool, extensions: list[str], count: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[bytes], RTCRtpSender]:
    # The same random starting points for both senders, so whole packets compare.
    for module in ("aiortc.rtcrtpsender", "gateway.media.sender"):
        monkeypatch.setattr(f"{module}.random_sequence_number", lambda: 32000)
        monkeypatch.setattr(f"{module}.random32", lambda: 0xFFFFF000)
    transport = RecordingTransport()
    track = PlayoutTrack()
    sender = RTCRtpSender(track, transport)  # type: ignore[arg-type]
    sender._ssrc = 0x12345678
    if lean:
        PlayoutSender.adopt(sender)
    await sender.send(
        RTCRtpSendParameters(
            codecs=[OPUS],
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i + 1, uri=uri)
                for i, uri in enumerate(extensions)
            ],
            muxId="audio",
            rtcp=RTCRtcpParameters(cname="gateway"),
        )
    )
    playback = track.play_packets([bytes([0x48, i, i, i]) for i in range(count - 4)])
    await playback.wait()
    while len(transport.rtp) < count:
        await asyncio.sleep(0.02)
    await sender.stop()
    return transport.rtp, sender


@pytest.mark.parametrize("extensions", [[], [AUDIO_LEVEL], [MID, AUDIO_LEVEL]])
@on_virtual_clock
async def test_packets_are_byte_for_byte_aiortcs(
    extensions: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stock, stock_sender = await run_sender(False, extensions, 12, monkeypatch)
    lean, lean_sender = await run_sender(True, extensions, 12, monkeypatch)
    assert type(lean_sender) is PlayoutSender and type(stock_sender) is RTCRtpSender
    stock, lean = stock[:12], lean[:12]
    assert lean == stock
    # The sequence number and the timestamp wrap as they should.
    assert stock[0][2:8] == bytes.fromhex("7d00fffff000")
    assert stock[-1][4:8] == ((0xFFFFF000 + 11 * 960) & 0xFFFFFFFF).to_bytes(4, "big")
    assert (b"audio" in stock[0]) == (MID in extensions)


@on_virtual_clock
async def test_sender_reports_carry_what_aiortcs_would(monkeypatch: pytest.MonkeyPatch) -> None:
    for lean in (False, True):
        packets, sender = await run_sender(lean, [], 8, monkeypatch)
        # What RTCP sender reports are built from: the count of packets and of payload
        # octets sent, the last packet's RTP timestamp and its wall-clock (NTP) time.
        assert sender._RTCRtpSender__packet_count == len(packets)
        assert sender._RTCRtpSender__octet_count == sum(len(p) - 12 for p in packets)
        assert sender._RTCRtpSender__rtp_timestamp == int.from_bytes(packets[-1][4:8])
        ntp = sender._RTCRtpSender__ntp_timestamp
        assert abs(ntp - ntp_time(time.time())) < 2 << 32


def test_ntp_time_matches_aiortcs_clock() -> None:
    from aiortc import clock

    assert abs(ntp_time(time.time()) - clock.current_ntp_time()) < (1 << 32) // 100


def test_only_aiortcs_own_sender_is_adopted() -> None:
    class Other(RTCRtpSender):
        pass

    sender = Other.__new__(Other)
    with pytest.raises(TypeError):
        PlayoutSender.adopt(sender)


async def start_lean(track: PlayoutTrack, transport: RecordingTransport) -> RTCRtpSender:
    sender = PlayoutSender.adopt(RTCRtpSender(track, transport))  # type: ignore[arg-type]
    await sender.send(
        RTCRtpSendParameters(codecs=[OPUS], muxId="audio", rtcp=RTCRtcpParameters(cname="gw"))
    )
    await asyncio.sleep(0)  # its RTP task starts: the first frame goes at once
    assert transport.rtp
    return sender


@on_virtual_clock
async def test_all_calls_send_from_one_tick_and_a_failing_one_ends_alone() -> None:
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    transports = [RecordingTransport() for _ in range(3)]
    tracks = [PlayoutTrack() for _ in range(3)]
    senders = [await start_lean(t, tr) for t, tr in zip(tracks, transports, strict=True)]
    assert clock.subscribers == 3  # one tick callback each, no task woken per frame
    await asyncio.sleep(0.1)

    def broken(now: float) -> tuple[bytes, int] | None:
        raise RuntimeError("a bot's playout broke")

    tracks[1].poll = broken  # type: ignore[method-assign]
    # A callback per frame takes the track's frames off the compiled fast path, to poll().
    tracks[1].on_frame_sent = lambda pts, is_speech: None
    sent = [len(t.rtp) for t in transports]
    await asyncio.sleep(0.2)
    # The broken call's sender ended (its track stopped, stop() returns at once) ...
    assert len(transports[1].rtp) == sent[1]
    assert tracks[1].readyState == "ended"
    await asyncio.wait_for(senders[1].stop(), 1)
    assert clock.subscribers == 2
    # ... and the others went on, numbered as before.
    for i in (0, 2):
        assert len(transports[i].rtp) >= sent[i] + 5
        seqs = [int.from_bytes(p[2:4]) for p in transports[i].rtp]
        stamps = [int.from_bytes(p[4:8]) for p in transports[i].rtp]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        assert all((b - a) & 0xFFFFFFFF == 960 for a, b in itertools.pairwise(stamps))
        await senders[i].stop()
    assert clock.subscribers == 0 and clock._ticker is None


@on_virtual_clock
async def test_a_transport_that_closes_ends_its_sender() -> None:
    class Closing(RecordingTransport):
        def send_rtp_now(self, data: bytes) -> None:
            if len(self.rtp) == 3:
                raise ConnectionError("Cannot send encrypted RTP, not connected")
            super().send_rtp_now(data)

    transport = Closing()
    sender = await start_lean(PlayoutTrack(), transport)
    await asyncio.sleep(0.2)
    assert len(transport.rtp) == 3
    assert sender.track is None  # the loop exited and stopped its track
    await asyncio.wait_for(sender.stop(), 1)
