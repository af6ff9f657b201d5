"""Speech encoded in C (``_rtp.Encoder``) and sent in the same call (``Outbound.send_pcm``).

The compiled encoder gives the ctypes encoder's packets byte for byte, from any
C-contiguous int16 buffer (hypothesis over random frames too); what is not such
a buffer, or a closed encoder, raises ValueError on both paths; ``send_pcm``
puts on the wire what the Python path (encode, then send) would; a
PlayoutSender playing PCM sends the same packets with the extension as without;
and polling a track once per tick unless it is behind gives what polling until
None gives (hypothesis over tick times and stalls).
"""

from __future__ import annotations

import array
import asyncio
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtcpParameters, RTCRtpSendParameters
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.media import native
from gateway.media.audio import FRAME_SAMPLES, load_wav
from gateway.media.opus import OpusEncoder
from gateway.media.playout import PlayoutTrack
from gateway.media.sender import PlayoutSender

from .test_media_native import Holder, route_to, sessions
from .test_media_sender import OPUS, RecordingTransport
from .virtual_clock import on_virtual_clock

_rtp = native._rtp
AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"


def python_encoder(monkeypatch: pytest.MonkeyPatch, bitrate: int = 20000) -> OpusEncoder:
    """An OpusEncoder made as without the extension built: ctypes, its own copy."""
    with monkeypatch.context() as patch:
        patch.setattr(native, "_rtp", None)
        encoder = OpusEncoder(bitrate)
    assert encoder._native_encoder is None
    return encoder


def speech(seconds: float = 3.0) -> np.ndarray:
    return load_wav(AUDIO / "cards-005.wav")[: int(16000 * seconds)]


def frames_of(pcm: np.ndarray) -> list[np.ndarray]:
    return [
        pcm[i : i + FRAME_SAMPLES] for i in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES)
    ]


def unaligned(frame: np.ndarray) -> memoryview:
    """The frame as int16 starting on an odd address."""
    raw = bytearray(len(frame) * 2 + 1)
    raw[1:] = frame.tobytes()
    view = memoryview(raw)[1:].cast("h")
    assert view.c_contiguous
    return view


def test_the_compiled_encoder_gives_the_ctypes_packets_from_any_int16_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert native.available()
    for bitrate in (20000, 12000):
        ours, reference = OpusEncoder(bitrate), python_encoder(monkeypatch, bitrate)
        assert isinstance(ours._native_encoder, _rtp.Encoder)
        shapes = [
            lambda f: f,  # an ndarray
            lambda f: array.array("h", f.tobytes()),
            lambda f: memoryview(f.tobytes()).cast("h"),
            unaligned,
        ]
        pcm = np.concatenate([speech(), np.zeros(FRAME_SAMPLES * 3, np.int16)])
        for i, frame in enumerate(frames_of(pcm)):
            shape = shapes[i % len(shapes)]
            assert ours.encode(shape(frame)) == reference.encode(shape(frame)), i


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=2 * FRAME_SAMPLES, max_size=2 * FRAME_SAMPLES), max_size=12))
def test_any_frames_encode_alike_on_both_paths(frames: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        ours, reference = OpusEncoder(), python_encoder(patch)
    for raw in frames:
        frame = array.array("h", raw)
        assert ours.encode(frame) == reference.encode(frame)


BAD_FRAMES: list[Any] = [
    np.zeros(FRAME_SAMPLES - 1, np.int16),  # short
    np.zeros(FRAME_SAMPLES + 1, np.int16),  # long
    np.zeros(FRAME_SAMPLES, np.int32),  # not int16
    np.zeros(FRAME_SAMPLES // 2, np.int32),  # the right bytes, the wrong type
    np.zeros(FRAME_SAMPLES, np.float32),
    np.zeros((2, FRAME_SAMPLES // 2), np.int16),  # 2-D
    np.zeros(2 * FRAME_SAMPLES, np.int16)[::2],  # strided
    bytes(2 * FRAME_SAMPLES),  # bytes, not samples
    "x" * FRAME_SAMPLES,
    None,
    [0] * FRAME_SAMPLES,
]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_what_is_not_a_frame_of_int16_raises_value_error(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = OpusEncoder() if compiled else python_encoder(monkeypatch)
    for bad in BAD_FRAMES:
        with pytest.raises(ValueError, match="int16 samples"):
            encoder.encode(bad)
    good = encoder.encode(np.zeros(FRAME_SAMPLES, np.int16))  # still usable after those
    assert good
    encoder.close()
    with pytest.raises(ValueError, match="closed"):
        encoder.encode(np.zeros(FRAME_SAMPLES, np.int16))
    encoder.close()  # twice is fine


def test_a_closed_or_unmade_compiled_encoder_refuses_to_encode() -> None:
    encoder = OpusEncoder()
    native_encoder = encoder._native_encoder
    assert native_encoder is not None and not native_encoder.closed
    stream = _rtp.Outbound(Holder(None), 0x80, 0x80 | 111, 0x1234, b"", 1, 0)
    encoder.close()
    assert native_encoder.closed
    with pytest.raises(ValueError, match="closed"):
        stream.send_pcm(encoder, np.zeros(FRAME_SAMPLES, np.int16), 0)
    with pytest.raises(ValueError, match="closed"):  # made without __init__: no state
        _rtp.Encoder.__new__(_rtp.Encoder).encode(np.zeros(FRAME_SAMPLES, np.int16))
    with pytest.raises(ValueError, match="NULL"):
        _rtp.Encoder(
            native.opus_function("opus_encode"), native.opus_function("opus_encode"), 0, 320
        )
    with pytest.raises(ValueError, match="frame_samples"):
        _rtp.Encoder(1, 1, 1, 0)
    assert stream.packets == 0  # nothing was counted for what was not sent


def test_send_pcm_refuses_bad_buffers_and_foreign_encoders() -> None:
    stream = _rtp.Outbound(Holder(None), 0x80, 0x80 | 111, 0x1234, b"", 1, 0)
    encoder = OpusEncoder()
    for bad in BAD_FRAMES:
        with pytest.raises(ValueError, match="int16 samples"):
            stream.send_pcm(encoder, bad, 0)
    with pytest.raises(AttributeError):
        stream.send_pcm(object(), np.zeros(FRAME_SAMPLES, np.int16), 0)
    without = OpusEncoder()
    without._native_encoder = None
    with pytest.raises(TypeError, match="compiled"):
        stream.send_pcm(without, np.zeros(FRAME_SAMPLES, np.int16), 0)
    with pytest.raises(TypeError):
        stream.send_pcm(encoder, np.zeros(FRAME_SAMPLES, np.int16))  # type: ignore[call-arg]
    assert stream.packets == 0 and stream.sequence_number == 1


def test_send_pcm_puts_on_the_wire_what_encode_then_send_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through an open route (SRTP, sendto) and without one (the packet comes back in
    clear), C's encode+send gives the packets of the Python path's encode, then send."""
    extensions = b"\xbe\xde\x00\x01\x91\x61\x00\x00"  # the mid, as aiortc serializes it
    pcm = speech(2.0)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        for end in (a, b):
            end.bind(("127.0.0.1", 0))
        b.settimeout(2)
        tx, _ = sessions()
        reference_tx, _ = sessions()
        route = route_to(b, a, tx)
        routed = _rtp.Outbound(Holder(route), 0x90, 0x80 | 111, 0x1234, extensions, 65530, 7)
        clear = _rtp.Outbound(Holder(None), 0x90, 0x80 | 111, 0x1234, extensions, 65530, 7)
        python = native.PythonOutbound(None, 0x90, 0x80 | 111, 0x1234, extensions, 65530, 7)
        ours, again, reference = OpusEncoder(), OpusEncoder(), python_encoder(monkeypatch)
        for i, frame in enumerate(frames_of(pcm)):
            expected = python.send_pcm(reference, frame, 960 * i)
            assert expected is not None
            assert routed.send_pcm(ours, frame, 960 * i) is None
            assert b.recv(2000) == reference_tx.protect(expected)
            assert clear.send_pcm(again, frame, 960 * i) == expected
        for stream in (routed, clear):
            assert (stream.packets, stream.octets, stream.sequence_number) == (
                python.packets,
                python.octets,
                python.sequence_number,
            )
            assert stream.rtp_timestamp == python.rtp_timestamp
        assert route.tx_packets == python.packets and route.fallbacks == 0


async def play_pcm(
    pcm: np.ndarray, monkeypatch: pytest.MonkeyPatch, *, disable_for: float = 0.0, **options: Any
) -> tuple[list[bytes], PlayoutSender]:
    """The RTP packets a PlayoutSender sends while a track plays ``pcm`` (disabled for
    ``disable_for`` seconds from 0.2 s in)."""
    monkeypatch.setattr("gateway.media.sender.random_sequence_number", lambda: 32000)
    monkeypatch.setattr("gateway.media.sender.random32", lambda: 0xFFFFF000)
    transport = RecordingTransport()
    tap = options.pop("tap", None)
    track = PlayoutTrack(**options)
    track.tap = tap
    sender = PlayoutSender.adopt(RTCRtpSender(track, transport))  # type: ignore[arg-type]
    sender._ssrc = 0x12345678
    await sender.send(
        RTCRtpSendParameters(codecs=[OPUS], muxId="audio", rtcp=RTCRtcpParameters(cname="gw"))
    )
    playback = track.play(pcm)
    if disable_for:
        await asyncio.sleep(0.2)
        sender._enabled = False
        await asyncio.sleep(disable_for)
        sender._enabled = True
    await playback.wait()
    await sender.stop()
    return transport.rtp, sender


def speech_by_slot(packets: list[bytes], first: bytes) -> dict[int, bytes]:
    """Each packet's payload by its frame slot from the one that carries ``first``."""
    start = next(int.from_bytes(p[4:8]) for p in packets if p[12:] == first)
    return {((int.from_bytes(p[4:8]) - start) & 0xFFFFFFFF) // 960: p[12:] for p in packets}


@on_virtual_clock
async def test_a_sender_playing_pcm_sends_what_it_sent_without_the_extension(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pcm = speech(1.5)
    expected = OpusEncoder().encode_pcm(pcm)
    compiled, sender = await play_pcm(pcm, monkeypatch)
    assert type(sender._stream) is _rtp.Outbound
    with monkeypatch.context() as patch:
        patch.setattr(native, "_rtp", None)  # PythonOutbound and the ctypes encoder
        python, sender = await play_pcm(pcm, monkeypatch)
        assert type(sender._stream) is native.PythonOutbound
    # A tap and an on_frame_sent callback see each frame encoded first (no send_pcm).
    tapped: list[tuple[int, bytes]] = []
    sent: list[bool] = []
    observed, _ = await play_pcm(
        pcm, monkeypatch, tap=tapped, on_frame_sent=lambda pts, speech: sent.append(speech)
    )
    for packets in (compiled, python, observed):
        by_slot = speech_by_slot(packets, expected[0])
        assert [by_slot[i] for i in range(len(expected))] == expected
    assert [payload for _, payload in tapped] == expected
    assert sent.count(True) == len(expected)


@on_virtual_clock
async def test_a_disabled_sender_keeps_the_encoder_going(monkeypatch: pytest.MonkeyPatch) -> None:
    """While disabled, PCM frames are encoded and dropped, as when every frame was encoded
    before the send: the speech after re-enabling is what an always-enabled sender sends."""
    pcm = speech(1.0)
    expected = OpusEncoder().encode_pcm(pcm)
    packets, _ = await play_pcm(pcm, monkeypatch, disable_for=0.2)
    by_slot = speech_by_slot(packets, expected[0])
    sent = [i for i in range(len(expected)) if i in by_slot]
    assert len(sent) < len(expected) - 5 and expected.index(expected[-1]) in sent  # a gap
    assert all(by_slot[i] == expected[i] for i in sent)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=0.15), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=4),
)
def test_polling_while_behind_sends_what_polling_until_none_sends(
    steps: list[float], max_burst: int
) -> None:
    """The sender polls once per tick unless the track says it is behind: whatever the
    ticks' times (on time, early by a hair, after stalls short and long), it gets the
    frames, timestamps and counters that polling until None gives."""

    async def run() -> None:
        until_none, while_behind = (
            PlayoutTrack(max_burst=max_burst),
            PlayoutTrack(max_burst=max_burst),
        )
        for track in (until_none, while_behind):
            track._start = 1000.0  # as if its first poll was at this tick
            track.play_packets([bytes([0x48, i]) for i in range(20)])
        got: tuple[list[Any], list[Any]] = ([], [])
        now = 1000.0
        for step in steps:
            now += step
            while (frame := until_none.poll(now)) is not None:
                got[0].append(frame)
            while (frame := while_behind.poll(now)) is not None:
                got[1].append(frame)
                if not while_behind.behind:
                    break
            assert got[0] == got[1]
        assert until_none.stats == while_behind.stats

    asyncio.run(run())
