"""Inbound audio: our jitter buffer, InboundAudio on a receiver, and real peers over loopback."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
from aiortc import (
    RTCCertificate,
    RTCConfiguration,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
)
from aiortc.rtp import RtpPacket
from numpy.typing import NDArray

from gateway.media.audio import FRAME_SAMPLES, frame_rms, load_wav
from gateway.media.dtmf import DtmfSender, encode_digit
from gateway.media.inbound import InboundAudio
from gateway.media.jitter import JitterBuffer
from gateway.media.opus import (
    ENCODER_DELAY,
    FRAME_TICKS,
    OpusDecoder,
    OpusEncoder,
    silence_packet,
)
from gateway.media.playout import PlayoutTrack

from .peers import connected

AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"
SSRC = 0x0BADCAFE


# --- the jitter buffer, with labelled packets ------------------------------------------


class Buffer:
    """A JitterBuffer whose output is recorded; packets are labelled by frame index."""

    def __init__(self, window: int = 2, max_gap: int = 25, start: int = 123456) -> None:
        self.out: list[int | None] = []
        self.start = start
        self.jb = JitterBuffer(self._output, window=window, max_gap=max_gap)

    def _output(self, payload: bytes | None) -> None:
        self.out.append(None if payload is None else int(payload))

    def push(self, *indices: int) -> None:
        for i in indices:
            self.jb.push((self.start + 960 * i) & 0xFFFFFFFF, str(i).encode())


def test_in_order_packets_go_out_at_once() -> None:
    b = Buffer()
    for i in range(50):
        b.push(i)
        assert b.out == list(range(i + 1))  # zero added delay
    assert b.jb.late == 0
    assert not b.jb.holding


def test_reordered_packets_are_put_back_in_order() -> None:
    b = Buffer(window=2)
    b.push(0, 1, 3)
    assert b.out == [0, 1]
    assert b.jb.holding
    b.push(2)
    assert b.out == [0, 1, 2, 3]
    b.push(5, 4, 6)
    assert b.out == list(range(7))
    assert b.jb.late == 0


@pytest.mark.parametrize("window", [1, 2, 3])
def test_a_lost_packet_is_concealed_and_leaves_no_lasting_delay(window: int) -> None:
    b = Buffer(window=window)
    lag = []
    for i in range(40):
        if i != 10:
            b.push(i)
        lag.append(i + 1 - len(b.out))
    assert b.out == [*range(10), None, *range(11, 40)]
    # Frames behind (the lost one, then the ones held back for it) only while
    # waiting for the lost packet: up to `window` packets...
    assert lag[10 : 11 + window] == list(range(1, window + 2))
    # ...then back to zero added delay for good.
    assert lag[:10] == [0] * 10
    assert lag[11 + window :] == [0] * (40 - 11 - window)


def test_window_zero_never_waits() -> None:
    b = Buffer(window=0)
    b.push(0, 2)
    assert b.out == [0, None, 2]


def test_burst_loss_is_concealed_frame_by_frame() -> None:
    b = Buffer(window=2)
    b.push(0, 1, 6, 7, 8)
    assert b.out == [0, 1, None, None, None, None, 6, 7, 8]


def test_late_and_duplicate_packets_are_dropped() -> None:
    b = Buffer(window=1)
    b.push(0, 1, 3, 4)  # 2 given up
    b.push(2)  # too late
    b.push(4)  # duplicate of a played packet
    b.push(6, 6)  # duplicate of a held packet
    b.push(5)
    assert b.out == [0, 1, None, 3, 4, 5, 6]
    assert b.jb.late == 3


def test_timestamp_wrap_around_is_not_a_jump() -> None:
    b = Buffer(start=0xFFFFFFFF - 960 * 3 + 1)
    b.push(*range(8))
    assert b.out == list(range(8))
    assert b.jb.discontinuities == 0


def test_forward_jump_is_a_discontinuity_not_a_concealment_flood() -> None:
    b = Buffer(window=2, max_gap=25)
    b.push(0, 1, 2)
    b.push(100000, 100001)  # the sender's timeline moved 33 minutes on
    assert b.out == [0, 1, 2, 100000, 100001]
    assert b.jb.discontinuities == 1
    b.push(100003, 100004, 100005)
    assert b.out[-4:] == [None, 100003, 100004, 100005]  # ordinary loss handling again


def test_gap_at_the_limit_is_still_concealed() -> None:
    b = Buffer(window=2, max_gap=25)
    b.push(0, 25)
    assert b.jb.discontinuities == 0
    b.push(26, 27)
    assert b.out == [0, *[None] * 24, 25, 26, 27]


def test_backward_jump_needs_two_packets_to_resync() -> None:
    b = Buffer(window=2, max_gap=25)
    b.push(1000, 1001)
    b.push(5)  # one stray, very old packet: dropped
    assert b.out == [1000, 1001]
    assert b.jb.late == 1
    b.push(1002)
    b.push(6, 7)  # a new timeline: resync on its second packet
    assert b.out == [1000, 1001, 1002, 7]
    assert b.jb.discontinuities == 1
    b.push(8)
    assert b.out[-1] == 8


def test_release_gives_up_waiting() -> None:
    b = Buffer(window=3)
    b.push(0, 2, 4)
    assert b.out == [0]
    b.jb.release()
    assert b.out == [0, None, 2, None, 4]
    assert not b.jb.holding


def test_packets_of_other_durations() -> None:
    out: list[bytes | None] = []
    jb = JitterBuffer(out.append, window=1)
    jb.push(0, b"a", 480)  # 10 ms
    jb.push(480, b"b", 1920)  # 40 ms
    jb.push(2400, b"c", 960)
    jb.push(4320, b"e", 960)  # "d" (960 ticks at 3360) lost
    jb.push(5280, b"f", 960)
    assert out == [b"a", b"b", b"c", None, b"e", b"f"]


# --- InboundAudio on a receiver, with real Opus ------------------------------------------


@pytest.fixture(scope="module")
def speech() -> NDArray[np.int16]:
    return load_wav(AUDIO / "cards-005.wav")


@pytest.fixture(scope="module")
def opus(speech: NDArray[np.int16]) -> list[bytes]:
    return OpusEncoder().encode_pcm(speech)


@pytest.fixture(scope="module")
def reference(opus: list[bytes]) -> list[NDArray[np.int16]]:
    decoder = OpusDecoder()
    return [np.array(decoder.decode(p)) for p in opus]


class Inbound:
    """InboundAudio on a real (unstarted) RTCRtpReceiver, fed RTP packets directly."""

    def __init__(self, **options: int) -> None:
        dtls = RTCDtlsTransport(
            RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
        )
        self.receiver = RTCRtpReceiver("audio", dtls)
        self.frames: list[NDArray[np.int16]] = []
        self.digits: list[tuple[str, int]] = []
        self.audio = InboundAudio(
            self.receiver,
            self.frames.append,
            lambda digit, ms: self.digits.append((digit, ms)),
            **options,
        )
        self.audio.attach()
        self.seq = 40000
        self.timestamp = 0xFFFF0000

    async def send(self, pt: int, payload: bytes, timestamp: int, marker: bool = False) -> None:
        packet = RtpPacket(
            payload_type=pt,
            marker=int(marker),
            sequence_number=self.seq & 0xFFFF,
            timestamp=timestamp & 0xFFFFFFFF,
            ssrc=SSRC,
            payload=payload,
        )
        self.seq += 1
        await self.receiver._handle_rtp_packet(packet, arrival_time_ms=0)

    async def send_audio(self, payload: bytes, index: int) -> None:
        await self.send(111, payload, self.timestamp + 960 * index)

    async def send_digit(self, digit: str, index: int) -> None:
        for payload, marker, _ in encode_digit(digit):
            await self.send(126, payload, self.timestamp + 960 * index, marker)


async def test_in_order_audio_decodes_exactly_as_a_decoder_would(
    opus: list[bytes], reference: list[NDArray[np.int16]]
) -> None:
    inbound = Inbound()
    for i, payload in enumerate(opus):
        await inbound.send_audio(payload, i)
        assert len(inbound.frames) == i + 1  # handed on while handling the packet
    assert all(np.array_equal(a, b) for a, b in zip(inbound.frames, reference, strict=True))
    stats = inbound.audio.stats
    assert (stats.packets, stats.lost, stats.late, stats.concealed) == (len(opus), 0, 0, 0)


async def test_dtmf_interleaved_with_audio_in_one_sequence_space(
    opus: list[bytes], reference: list[NDArray[np.int16]]
) -> None:
    # Audio keeps flowing while a key is down; DTMF packets take sequence numbers
    # between audio packets, so audio sequence numbers have gaps that are no loss.
    inbound = Inbound()
    events = encode_digit("3")
    for i, payload in enumerate(opus[:60]):
        await inbound.send_audio(payload, i)
        if 20 <= i < 20 + len(events):
            event, marker, _ = events[i - 20]
            await inbound.send(126, event, inbound.timestamp + 960 * 20, marker)
    assert inbound.digits == [("3", 160)]
    assert len(inbound.frames) == 60
    assert all(np.array_equal(a, b) for a, b in zip(inbound.frames, reference[:60], strict=True))
    stats = inbound.audio.stats
    assert (stats.lost, stats.concealed, stats.dtmf, stats.dtmf_packets) == (0, 0, 1, 10)


async def test_audio_paused_for_dtmf_is_filled_but_not_lost(opus: list[bytes]) -> None:
    # Browsers send events instead of audio while a key is down.
    inbound = Inbound()
    for i in range(20):
        await inbound.send_audio(opus[i], i)
    await inbound.send_digit("#", 20)
    for i in range(30, 40):
        await inbound.send_audio(opus[i], i)
    assert inbound.digits == [("#", 160)]
    assert len(inbound.frames) == 40
    assert all(len(f) == FRAME_SAMPLES for f in inbound.frames)
    stats = inbound.audio.stats
    assert (stats.lost, stats.concealed) == (0, 10)


async def test_lost_packet_is_concealed_and_timing_recovers(
    opus: list[bytes], reference: list[NDArray[np.int16]]
) -> None:
    inbound = Inbound(window=2)
    lag = []
    for i, payload in enumerate(opus[:60]):
        if i != 30:
            await inbound.send_audio(payload, i)
        lag.append(i + 1 - len(inbound.frames))
    assert lag[:30] == [0] * 30
    assert lag[30:33] == [1, 2, 3]  # the lost frame, then two held back for it
    assert lag[33:] == [0] * 27
    assert len(inbound.frames) == 60
    assert np.array_equal(inbound.frames[29], reference[29])
    assert any(inbound.frames[30])  # concealment continues the voice
    await inbound.send_audio(opus[30], 30)  # arrives after it was given up
    stats = inbound.audio.stats
    assert (stats.lost, stats.concealed, stats.late) == (1, 1, 1)
    assert len(inbound.frames) == 60


async def test_held_packets_are_released_when_the_stream_pauses(opus: list[bytes]) -> None:
    inbound = Inbound(window=2)
    released = asyncio.Event()

    def on_frame(frame: NDArray[np.int16]) -> None:
        inbound.frames.append(frame)
        if len(inbound.frames) == 4:
            released.set()

    inbound.audio.on_frame = on_frame
    for i in (0, 1, 3):
        await inbound.send_audio(opus[i], i)
    assert len(inbound.frames) == 2
    await asyncio.wait_for(released.wait(), 5)  # no more packets: the timer gives up on 2
    assert inbound.audio.stats.lost == 1


async def test_corrupt_payload_is_concealed(opus: list[bytes]) -> None:
    inbound = Inbound()
    await inbound.send_audio(opus[0], 0)
    await inbound.send_audio(b"\xff\xff\xff", 1)
    await inbound.send_audio(b"", 2)
    await inbound.send_audio(opus[3], 3)
    assert [len(f) for f in inbound.frames] == [FRAME_SAMPLES] * 4
    stats = inbound.audio.stats
    assert (stats.decode_errors, stats.concealed, stats.lost) == (2, 2, 0)


async def test_other_payload_types_and_failing_callbacks(opus: list[bytes]) -> None:
    inbound = Inbound()
    await inbound.send(0, b"\xff" * 160, 0)  # PCMU: not ours
    assert inbound.frames == []

    def fail(frame: NDArray[np.int16]) -> None:
        raise RuntimeError("boom")

    inbound.audio.on_frame = fail
    await inbound.send_audio(opus[0], 0)  # must not raise into aiortc's receive loop
    assert inbound.audio.stats.packets == 1


async def test_packets_still_feed_rtcp_reception_statistics(opus: list[bytes]) -> None:
    inbound = Inbound()
    for i in range(10):
        await inbound.send_audio(opus[i], i)
    await inbound.send_digit("1", 10)
    stats = [s for s in (await inbound.receiver.getStats()).values() if s.type == "inbound-rtp"]
    assert len(stats) == 1
    assert stats[0].ssrc == SSRC
    assert stats[0].packetsReceived == 20
    assert stats[0].packetsLost == 0


async def test_detach_gives_packets_back(opus: list[bytes]) -> None:
    inbound = Inbound()
    await inbound.send_digit("1", 0)
    inbound.audio.detach()
    assert "_handle_rtp_packet" not in inbound.receiver.__dict__
    assert inbound.digits == [("1", 160)]


# --- two real peers over loopback ---------------------------------------------------


@pytest.mark.usefixtures("loopback", "telephone_events")
async def test_speech_and_dtmf_between_two_peers(speech: NDArray[np.int16]) -> None:
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    gateway = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        sent: list[tuple[int, bool]] = []  # (pts, is_speech) of each frame sent
        track = PlayoutTrack(on_frame_sent=lambda pts, is_speech: sent.append((pts, is_speech)))
        spoken: list[tuple[int, bytes]] = []  # (pts, payload) of each speech frame sent
        track.tap = spoken
        sender = caller.addTrack(track)
        await caller.setLocalDescription(await caller.createOffer())
        await gateway.setRemoteDescription(caller.localDescription)
        await gateway.setLocalDescription(await gateway.createAnswer())
        answer = gateway.localDescription.sdp
        assert "a=rtpmap:126 telephone-event/8000" in caller.localDescription.sdp
        assert "a=rtpmap:126 telephone-event/8000" in answer
        opus_pt = re.search(r"a=rtpmap:(\d+) opus/48000/2", answer)
        assert opus_pt is not None

        received: list[NDArray[np.int16]] = []
        enough = asyncio.Event()
        target = [0]

        def on_frame(frame: NDArray[np.int16]) -> None:
            received.append(frame)
            if target[0] and len(received) >= target[0]:
                enough.set()

        digits: list[tuple[str, int]] = []
        inbound = InboundAudio(
            gateway.getTransceivers()[0].receiver,
            on_frame,
            lambda digit, ms: digits.append((digit, ms)),
            opus_pt=int(opus_pt.group(1)),
        )
        inbound.attach()
        await caller.setRemoteDescription(gateway.localDescription)
        await connected(caller)
        await connected(gateway)

        playback = track.play(speech)
        await asyncio.wait_for(playback.wait(), 20)
        # Every slot up to the last frame sent so far, silence before the speech included.
        target[0] = sent[-1][0] // FRAME_TICKS + 1
        await asyncio.wait_for(enough.wait(), 5)

        # Every frame sent by then arrived, each as 320 samples, in its RTP slot (later
        # ones may follow). A stalled event loop (a loaded machine) makes the track skip
        # frame slots, by design: the receiver then conceals exactly those, and nothing else.
        slots = len(received)
        assert target[0] <= slots
        assert {len(f) for f in received} == {FRAME_SAMPLES}
        arrived = [(pts // FRAME_TICKS, is_speech) for pts, is_speech in sent]
        arrived = [(slot, is_speech) for slot, is_speech in arrived if slot < slots]
        stats = inbound.stats
        skipped = slots - len(arrived)  # slots in the received span that nothing was sent in
        assert (stats.lost, stats.late, stats.concealed) == (skipped, 0, skipped)
        assert skipped <= track.stats.skipped_frames

        # Each frame is exactly what a decoder makes of the packets sent, in their slots,
        # with the skipped slots concealed (the frames after a gap too: the codec's
        # prediction recovers from a loss over several frames).
        payloads = dict(spoken)
        by_slot = {pts // FRAME_TICKS: payloads.get(pts, silence_packet()) for pts, _ in sent}
        decoder = OpusDecoder()
        for slot in range(slots):
            payload = by_slot.get(slot)
            expected = decoder.conceal() if payload is None else decoder.decode(payload)
            assert np.array_equal(received[slot], expected), slot

        # And what was sent is the recording: line the loudness envelopes up and compare.
        decoder = OpusDecoder()
        played = np.concatenate([decoder.decode(by_slot[slot]) for slot, _ in arrived])
        heard = frame_rms(played)
        original = frame_rms(speech)
        lags = range(len(heard) - len(original) + 1)
        scores = [np.corrcoef(heard[k : k + len(original)], original)[0, 1] for k in lags]
        best = int(np.argmax(scores))
        # The speech starts where the track started it.
        assert best == [is_speech for _, is_speech in arrived].index(True)
        assert scores[best] > 0.9  # measured: 0.965 (frame grids 119 samples apart)
        # With the codec's delay taken out, the envelopes match as in a plain round trip.
        start = best * FRAME_SAMPLES + ENCODER_DELAY
        aligned = played[start : start + len(speech)]
        assert np.corrcoef(frame_rms(aligned), original)[0, 1] > 0.98  # measured: 0.994

        await DtmfSender(sender).send("159#")
        await asyncio.sleep(0.1)
        assert digits == [("1", 160), ("5", 160), ("9", 160), ("#", 160)]
        assert inbound.stats.dtmf == 4

        # RTCP went on: the caller's sender got receiver reports about its stream.
        reports = [s for s in (await sender.getStats()).values() if s.type == "remote-inbound-rtp"]
        assert reports
        assert reports[0].packetsLost == 0
    finally:
        await caller.close()
        await gateway.close()
