"""aiortc's receiver without its idle decoder thread (gateway/media/receiver.py): what
``receive()`` sets up, calls adding no threads, and aiortc's path when packets go back."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
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
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpReceiveParameters,
    RTCRtpRtxParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket
from av import AudioFrame

from gateway.calls import CallState
from gateway.media.audio import load_wav
from gateway.media.inbound import InboundAudio
from gateway.media.opus import OpusEncoder
from gateway.media.playout import PlayoutTrack
from gateway.media.receiver import LazyDecoderReceiver
from gateway.media.reports import ReportingReceiver

from .conftest import Stack, answered_call
from .peers import answer_as_gateway, connected

AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"
# Threads made on demand by thread pools (asyncio's default executor), bounded by the pool.
POOLS = ("asyncio_", "ThreadPoolExecutor")


def decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("-decoder")]


def threads() -> tuple[list[str], int]:
    """The process's threads but the pools' workers: their names, and how many
    the kernel counts (``/proc/self/task``, native threads included)."""
    named = threading.enumerate()
    pooled = sum(t.name.startswith(POOLS) for t in named)
    kept = sorted(t.name for t in named if not t.name.startswith(POOLS))
    return kept, len(os.listdir("/proc/self/task")) - pooled


def receiver_on_a_transport() -> tuple[RTCRtpReceiver, RTCDtlsTransport]:
    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    receiver = RTCRtpReceiver("audio", dtls)
    receiver._track = RemoteStreamTrack(kind="audio")  # what RTCPeerConnection gives it
    return receiver, dtls


PARAMETERS = RTCRtpReceiveParameters(
    codecs=[
        RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111),
        RTCRtpCodecParameters(
            mimeType="audio/rtx", clockRate=48000, payloadType=112, parameters={"apt": 111}
        ),
    ],
    encodings=[RTCRtpDecodingParameters(ssrc=1234, payloadType=111, rtx=RTCRtpRtxParameters(2345))],
    muxId="0",
)


async def test_receive_sets_the_receiver_up_as_aiortcs_but_for_the_thread() -> None:
    stock, stock_transport = receiver_on_a_transport()
    lean, lean_transport = receiver_on_a_transport()
    LazyDecoderReceiver.adopt(lean)
    threads_before = threading.active_count()
    await stock.receive(PARAMETERS)
    await lean.receive(PARAMETERS)
    try:
        assert threading.active_count() == threads_before + 1  # aiortc's, for the stock one
        assert stock._RTCRtpReceiver__decoder_thread.is_alive()
        assert lean._RTCRtpReceiver__decoder_thread is None
        assert not lean.decoding
        # Everything else aiortc's receive() set up: the same state, the same routes.
        assert vars(stock).keys() == vars(lean).keys()
        for name in ("started", "codecs", "rtx_ssrc"):
            attribute = f"_RTCRtpReceiver__{name}"
            assert getattr(lean, attribute) == getattr(stock, attribute), name
        assert lean._RTCRtpReceiver__started
        assert not lean._RTCRtpReceiver__rtcp_task.done()
        for mine, theirs in ((lean, lean_transport), (stock, stock_transport)):
            router = theirs._rtp_router
            assert router.receivers == {mine}
            assert router.ssrc_table == {1234: mine}
            assert router.mid_table == {"0": mine}
            assert router.payload_type_table == {111: {mine}, 112: {mine}}
        await lean.receive(PARAMETERS)  # again: nothing, as aiortc's
        assert lean._RTCRtpReceiver__decoder_thread is None
    finally:
        await stock.stop()
        await lean.stop()  # nothing to join
    assert lean._RTCRtpReceiver__rtcp_task.done()
    assert threading.active_count() == threads_before
    # Both tracks end as aiortc's thread ends them, and once: no thread comes after a stop.
    for receiver in (stock, lean):
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(receiver.track.recv(), 5)
    lean._handle_disconnect()
    assert lean.track._queue.empty()
    assert not lean.decoding


@pytest.mark.parametrize("adopt", [LazyDecoderReceiver.adopt, ReportingReceiver.adopt])
async def test_aiortcs_path_starts_the_thread_with_its_first_packet(
    adopt: Callable[[RTCRtpReceiver], LazyDecoderReceiver],
) -> None:
    receiver, _ = receiver_on_a_transport()
    lean = adopt(receiver)
    await lean.receive(PARAMETERS)
    frames: list[object] = []
    inbound = InboundAudio(lean, frames.append)
    inbound.attach()
    payloads = OpusEncoder().encode_pcm(load_wav(AUDIO / "cards-005.wav"))[:10]

    def packet(i: int) -> RtpPacket:
        return RtpPacket(
            payload_type=111, sequence_number=i, timestamp=960 * i, ssrc=1234, payload=payloads[i]
        )

    try:
        for i in range(5):
            await lean._handle_rtp_packet(packet(i), arrival_time_ms=0)
        assert len(frames) == 5
        assert not lean.decoding
        inbound.detach()
        for i in range(5, 10):
            await lean._handle_rtp_packet(packet(i), arrival_time_ms=0)
        assert lean.decoding
        frame = await asyncio.wait_for(lean.track.recv(), 5)  # aiortc's jitter buffer, its thread
        assert isinstance(frame, AudioFrame)
        assert len(frames) == 5
    finally:
        await lean.stop()
    assert not lean.decoding
    assert not decoder_threads()


@pytest.mark.usefixtures("loopback", "telephone_events")
async def test_a_detached_call_decodes_through_aiortc() -> None:
    """A gateway-side connection (CallTransport, PlayoutSender, ReportingReceiver) and a
    stock aiortc caller: while InboundAudio has the packets the gateway's receiver has no
    decoder thread; detached, the caller's speech comes out of the receiver's track
    through aiortc's thread; closed, no thread is left and the track has ended."""
    speech = load_wav(AUDIO / "cards-005.wav")
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    gateway = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        track = PlayoutTrack()
        caller.addTrack(track)
        side = await answer_as_gateway(caller, gateway)
        receiver, inbound, frames = side.receiver, side.inbound, side.frames
        await caller.setRemoteDescription(gateway.localDescription)
        await connected(caller)
        await connected(gateway)

        track.play(speech)
        async with asyncio.timeout(10):
            while len(frames) < 25:
                await asyncio.sleep(0.02)
        assert not receiver.decoding

        inbound.detach()
        got = len(frames)
        loud = 0
        async with asyncio.timeout(10):
            for _ in range(50):
                frame = await receiver.track.recv()
                assert isinstance(frame, AudioFrame)
                assert (frame.sample_rate, frame.samples) == (48000, 960)
                loud += bool(np.abs(frame.to_ndarray()).max() > 300)
        assert loud > 10  # the speech, not silence
        assert receiver.decoding
        assert len(frames) == got  # InboundAudio has none of them
    finally:
        await caller.close()
        await gateway.close()
    assert not receiver.decoding
    assert not decoder_threads()  # the caller's and the gateway's, joined
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(receiver.track.recv(), 5)


async def test_calls_add_no_threads(stack: Stack) -> None:
    """A gateway with calls up has the threads it had with one (the sandbox's phones, in
    this process too, take none either); calls that end leave none and end their tracks."""
    calls = [await answered_call(stack, "15551230001", "Ana")]
    with_one = threads()
    calls += [await answered_call(stack, f"1555123001{i}", f"Caller {i}") for i in range(3)]
    gateway_calls = [stack.gateway.calls.get(call.call_id) for call in calls]
    assert all(call is not None and call.state is CallState.ACTIVE for call in gateway_calls)
    receivers = [call.inbound.receiver for call in gateway_calls if call and call.inbound]
    assert len(receivers) == 4
    assert threads() == with_one
    assert not decoder_threads()
    assert not any(r.decoding for r in receivers)
    for call in calls:
        await call.hang_up()
    async with asyncio.timeout(10):
        for gateway_call in gateway_calls:
            assert gateway_call is not None
            await gateway_call.ended.wait()
    assert threads() == with_one
    assert not decoder_threads()
    for receiver in receivers:
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(receiver.track.recv(), 5)
