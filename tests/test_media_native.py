"""The compiled per-packet path (gateway/media/csrc/) against the Python path it replaces.

Its parser and Opus TOC reader agree with the Python ones on any input
(hypothesis); SRTP packets that fail authentication, lie about their lengths or
do not fit are counted and dropped; InboundAudio gives the same frames,
counters and RTCP statistics whether the compiled path takes in-order packets
or not, whatever order the packets come in (hypothesis); the outbound route
puts on the wire what pylibsrtp and the Python sender would, and hands a packet
it cannot send to asyncio.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
from array import array
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pylibsrtp
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
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from pylibsrtp import Policy, Session

from gateway.media import native
from gateway.media.audio import FRAME_SAMPLES, load_wav
from gateway.media.dtmf import DtmfSender, encode_digit
from gateway.media.inbound import InboundAudio
from gateway.media.opus import OpusEncoder, packet_duration
from gateway.media.playout import PlayoutTrack
from gateway.media.sender import PlayoutSender
from gateway.media.transport import CallTransport, parse_inbound

from .peers import connected

_rtp = native._rtp
KEY = bytes(range(30))
SSRC = 0x0BADCAFE
AUDIO = Path(__file__).resolve().parent / ".." / ".." / "shared" / "audio"


def test_the_extension_is_built() -> None:
    # `make install` builds it; without it the gateway runs (slower) in Python.
    assert native.available()
    assert native.srtp_function("srtp_unprotect") and native.opus_function("opus_decode")


# --- the parser and the TOC reader -------------------------------------------------------


def python_parse(data: bytes) -> tuple[int, ...] | None:
    try:
        p = parse_inbound(data)
    except ValueError:
        return None
    return (p.payload_type, p.marker, p.sequence_number, p.timestamp, p.ssrc)


def c_parse(data: bytes) -> tuple[tuple[int, ...], bytes] | None:
    parsed = _rtp.parse(data)
    if parsed is None:
        return None
    *fields, start, end = parsed
    assert 0 <= start <= end <= len(data)
    return tuple(fields), data[start:end]


@st.composite
def rtp_like(draw: st.DrawFn) -> bytes:
    """Packets near the valid ones: any flags, CSRC count, extension and padding lengths,
    each of which may lie about what follows."""
    first = draw(st.integers(0, 255))
    header = bytes([first, draw(st.integers(0, 255))]) + draw(st.binary(min_size=10, max_size=10))
    csrcs = draw(st.binary(max_size=64))
    extension = b""
    if draw(st.booleans()):
        words = draw(st.integers(0, 0xFFFF))
        extension = b"\xbe\xde" + words.to_bytes(2) + draw(st.binary(max_size=48))
    payload = draw(st.binary(max_size=64))
    padding = bytes([draw(st.integers(0, 255))]) if draw(st.booleans()) else b""
    data = header + csrcs + extension + payload + padding
    return data[: draw(st.integers(0, len(data)))]


@settings(max_examples=1500, deadline=None)
@given(st.one_of(rtp_like(), st.binary(max_size=80)))
def test_the_parser_agrees_with_parse_inbound_on_any_input(data: bytes) -> None:
    ours = c_parse(data)
    theirs = python_parse(data)
    if theirs is None:
        assert ours is None
    else:
        assert ours is not None
        assert ours == (theirs, parse_inbound(data).payload)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4))
def test_the_toc_reader_agrees_with_packet_duration(payload: bytes) -> None:
    try:
        expected = packet_duration(payload)
    except ValueError:
        expected = -1
    assert _rtp.opus_duration(payload) == expected


# --- inbound: SRTP in, frames out ------------------------------------------------------------


def sessions() -> tuple[Session, Session]:
    """(sender's, receiver's) SRTP sessions on one key."""
    return (
        Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND)),
        Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND)),
    )


class Wire:
    """InboundAudio on a receiver whose transport has the compiled path (``native``), or
    not; fed SRTP packets as a CallTransport's socket would."""

    certificate: RTCCertificate | None = None

    def __init__(self, native_path: bool = True, **options: Any) -> None:
        if Wire.certificate is None:
            Wire.certificate = RTCCertificate.generateCertificate()
        dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [Wire.certificate])
        self.receiver = RTCRtpReceiver("audio", dtls)
        self.tx, rx = sessions()
        self.slow: list[bytes] = []
        self.errors: list[BaseException] = []
        self.frames: list[NDArray[np.int16]] = []
        self.digits: list[tuple[str, int]] = []
        self.inbound = _rtp.Inbound(
            native.srtp_function("srtp_unprotect"),
            native.srtp_session(rx),
            rx,
            self._slow,
            self.errors.append,
        )
        if native_path:
            dtls._native_in = self.inbound  # type: ignore[attr-defined]  # as CallTransport's
        self.audio = InboundAudio(
            self.receiver,
            self.frames.append,
            lambda digit, ms: self.digits.append((digit, ms)),
            **options,
        )
        self.audio.attach()

    def _slow(self, data: bytes, arrival_time_ms: int) -> None:
        self.slow.append(data)
        self.audio.receive(parse_inbound(data), arrival_time_ms)

    def rtp(self, pt: int, seq: int, timestamp: int, payload: bytes, **kw: Any) -> bytes:
        packet = RtpPacket(
            payload_type=pt,
            sequence_number=seq & 0xFFFF,
            timestamp=timestamp & 0xFFFFFFFF,
            ssrc=kw.pop("ssrc", SSRC),
            payload=payload,
            **kw,
        )
        return packet.serialize()

    def send(self, pt: int, seq: int, timestamp: int, payload: bytes, **kw: Any) -> None:
        self.inbound.receive(self.tx.protect(self.rtp(pt, seq, timestamp, payload, **kw)))

    def rtcp_statistics(self) -> tuple[Any, ...]:
        stream = self.receiver._RTCRtpReceiver__remote_streams[SSRC]  # type: ignore[attr-defined]
        return (stream.base_seq, stream.max_seq, stream.cycles, stream.packets_received)


@functools.cache
def opus_packets() -> list[bytes]:
    return OpusEncoder().encode_pcm(load_wav(AUDIO / "cards-005.wav"))[:60]


@pytest.fixture
def opus() -> list[bytes]:
    return opus_packets()


async def test_in_order_packets_are_decoded_in_c_and_match_the_python_path(
    opus: list[bytes],
) -> None:
    wires = [Wire(), Wire(native_path=False)]
    for wire in wires:
        for i, payload in enumerate(opus[:40]):
            wire.send(111, 65530 + i, 0xFFFFF000 + 960 * i, payload)
    fast, slow = wires
    assert fast.inbound.fast_packets == 39  # the first one arms it
    assert len(fast.slow) == 1 and len(slow.slow) == 40
    assert len(fast.frames) == len(slow.frames) == 40
    assert all(np.array_equal(a, b) for a, b in zip(fast.frames, slow.frames, strict=True))
    assert all(isinstance(f, array) and f.typecode == "h" for f in fast.frames)
    assert asdict(fast.audio.stats) == asdict(slow.audio.stats)
    assert fast.audio.received == 40
    # The receiver reports' statistics: the sequence numbers wrapped once.
    assert fast.rtcp_statistics() == slow.rtcp_statistics() == (65530, 33, 1 << 16, 40)
    assert fast.inbound.rx_packets == 40 and fast.errors == []


# One stream, with what a network and a phone do to it: (payload type, packet index) in
# arrival order; index -1 is a corrupt packet at the next slot.
SCENARIOS = {
    "reordered": [(111, i) for i in (0, 1, 2, 4, 3, 5, 6, 8, 7, 9, 10)],
    "lost": [(111, i) for i in (0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13, 14)],
    "late_and_duplicate": [(111, i) for i in (0, 1, 2, 3, 4, 4, 2, 5, 6, 7)],
    "dtmf": [(111, 0), (111, 1), (126, 2), (126, 2), (126, 2), (111, 5), (111, 6), (111, 7)],
    "corrupt": [(111, 0), (111, 1), (111, -1), (111, 3), (111, 4), (0, 5), (111, 5), (111, 6)],
}


def play(wire: Wire, events: list[tuple[int, int]], opus: list[bytes]) -> None:
    seq = 1000
    last = 0
    for pt, index in events:
        if pt == 126:
            for payload, marker, _ in encode_digit("5")[:1]:
                wire.send(126, seq, 960 * index, payload, marker=int(marker))
        elif index < 0:
            last += 1
            wire.send(pt, seq, 960 * last, b"\xff\xff\xff")
        else:
            last = index
            wire.send(pt, seq, 960 * index, opus[index])
        seq += 1
    wire.audio._release()  # what the release timer would do


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_unusual_streams_take_the_python_path_with_the_same_result(
    name: str, opus: list[bytes]
) -> None:
    fast, slow = Wire(), Wire(native_path=False)
    for wire in (fast, slow):
        play(wire, SCENARIOS[name], opus)
    assert asdict(fast.audio.stats) == asdict(slow.audio.stats)
    assert len(fast.frames) == len(slow.frames)
    assert all(np.array_equal(a, b) for a, b in zip(fast.frames, slow.frames, strict=True))
    assert fast.digits == slow.digits
    assert fast.rtcp_statistics() == slow.rtcp_statistics()
    assert fast.inbound.fast_packets > 0 and fast.errors == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([111, 111, 111, 126, 0]), st.integers(-1, 24))))
# Found by hypothesis: a loss after audio the compiled path decoded is concealed, not silent.
@example([(111, -1), (111, 2), (111, -1)])
def test_any_arrival_order_gives_what_the_python_path_gives(
    events: list[tuple[int, int]],
) -> None:
    async def run() -> None:  # the jitter buffer's release timer needs a loop
        fast, slow = Wire(), Wire(native_path=False)
        for wire in (fast, slow):
            play(wire, events, opus_packets())
        assert asdict(fast.audio.stats) == asdict(slow.audio.stats)
        assert len(fast.frames) == len(slow.frames)
        assert all(np.array_equal(a, b) for a, b in zip(fast.frames, slow.frames, strict=True))
        assert fast.digits == slow.digits
        if any(pt == 111 for pt, _ in events):
            assert fast.rtcp_statistics() == slow.rtcp_statistics()

    asyncio.run(run())


async def test_the_recording_tap_and_a_new_callback_take_effect_at_once(
    opus: list[bytes],
) -> None:
    wire = Wire()
    for i in range(5):
        wire.send(111, i, 960 * i, opus[i])
    assert wire.inbound.armed
    tap: list[tuple[int, int, bytes]] = []
    wire.audio.tap = tap
    assert not wire.inbound.armed
    for i in range(5, 10):
        wire.send(111, i, 960 * i, opus[i])
    assert [t[1] for t in tap] == [960 * i for i in range(5, 10)]  # each packet recorded
    wire.audio.tap = None
    later: list[NDArray[np.int16]] = []
    wire.audio.on_frame = later.append
    for i in range(10, 15):
        wire.send(111, i, 960 * i, opus[i])
    assert len(wire.frames) == 10 and len(later) == 5
    assert wire.inbound.armed
    # What the compiled path counted stays counted after the audio is detached.
    assert wire.inbound.fast_packets >= 6
    assert wire.audio.stats.packets == wire.audio.received == 15
    wire.audio.close()
    assert wire.audio.stats.packets == wire.audio.received == 15
    assert wire.audio.stats.bytes == sum(len(p) for p in opus[:15])


async def test_srtp_that_fails_or_lies_is_counted_and_dropped(opus: list[bytes]) -> None:
    wire = Wire()
    wire.send(111, 1, 0, opus[0])
    good = wire.tx.protect(wire.rtp(111, 2, 960, opus[1]))
    tampered = bytearray(good)
    tampered[20] ^= 1
    wire.inbound.receive(bytes(tampered))  # authentication fails
    wire.inbound.receive(good[:-3])  # tag cut short
    wire.inbound.receive(b"\x80" * 11)  # shorter than a header
    wire.inbound.receive(b"\x80\x6f" + bytes(2000))  # longer than any buffer here
    assert (wire.inbound.auth_failures, wire.inbound.too_long) == (3, 1)
    # Authentic packets whose lengths lie (libsrtp checks the tag, not the padding).
    lying_padding = bytearray(wire.rtp(111, 3, 1920, b"\x01\x02"))
    lying_padding[0] |= 0x20
    lying_padding[-1] = 200
    wire.inbound.receive(wire.tx.protect(bytes(lying_padding)))
    zero_padding = bytearray(wire.rtp(111, 4, 1920, b"\x01\x00"))
    zero_padding[0] |= 0x20
    wire.inbound.receive(wire.tx.protect(bytes(zero_padding)))
    assert wire.inbound.malformed == 2
    wire.inbound.receive(good)
    assert len(wire.frames) == 2 and wire.errors == []
    assert wire.inbound.rx_packets == 8


async def test_failing_callbacks_are_reported_not_raised(opus: list[bytes]) -> None:
    wire = Wire()
    failing: list[bool] = []

    def on_frame(frame: NDArray[np.int16]) -> None:
        if failing:
            raise RuntimeError("bot failed")

    wire.audio.on_frame = on_frame
    wire.send(111, 1, 0, opus[0])
    assert wire.inbound.armed
    failing.append(True)
    wire.send(111, 2, 960, opus[1])  # the compiled path: reported to on_error
    assert [str(e) for e in wire.errors] == ["bot failed"]
    assert wire.errors[0].__traceback__ is not None
    assert wire.inbound.armed  # and the stream goes on
    wire.audio.on_frame = on_frame  # disarms: the Python path, which logs it itself
    wire.send(111, 3, 1920, opus[2])
    assert len(wire.errors) == 1 and wire.audio.stats.packets == 3


def test_the_port_sends_only_rtp_to_the_compiled_path() -> None:
    seen: list[bytes] = []
    other: list[tuple[bytes, Any]] = []
    _, rx = sessions()
    inbound = _rtp.Inbound(
        native.srtp_function("srtp_unprotect"),
        native.srtp_session(rx),
        rx,
        lambda data, ms: seen.append(data),
        print,
    )
    port = _rtp.Port(inbound, lambda data, addr: other.append((data, addr)))
    for data in (b"\x00\x01stun", b"\x16dtls", b"\x80\xc8rtcp-sr", b"\x80", b""):
        port(data, ("127.0.0.1", 1))
    port(b"\x80\x6f" + bytes(30), ("127.0.0.1", 1))  # RTP (fails authentication)
    assert [d for d, _ in other] == [b"\x00\x01stun", b"\x16dtls", b"\x80\xc8rtcp-sr", b"\x80", b""]
    assert inbound.rx_packets == 1 and inbound.auth_failures == 1 and seen == []


def test_bad_set_up_is_refused() -> None:
    _, rx = sessions()
    with pytest.raises(ValueError, match="NULL"):
        _rtp.Inbound(0, native.srtp_session(rx), rx, print, print)
    inbound = _rtp.Inbound(native.srtp_function("srtp_unprotect"), 1, rx, print, print)
    with pytest.raises(RuntimeError, match="configure"):
        inbound.arm(1, 111, 0, 960)
    with pytest.raises(TypeError):
        inbound.receive(bytearray(20))  # type: ignore[arg-type]
    # Objects made without __init__ refuse to work rather than follow NULL pointers.
    with pytest.raises(RuntimeError):
        _rtp.Inbound.__new__(_rtp.Inbound).receive(b"\x80" * 40)
    with pytest.raises(RuntimeError):
        _rtp.Port.__new__(_rtp.Port)(b"\x80" * 40, None)
    with pytest.raises(RuntimeError):
        _rtp.Outbound.__new__(_rtp.Outbound).send(b"abc", 0)
    assert not _rtp.Route.__new__(_rtp.Route).open


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            rtp_like().map(lambda data: (data, None)),
            st.tuples(st.just(b""), st.binary(max_size=300)),  # in order, any payload
        ),
        max_size=8,
    )
)
def test_authentic_garbage_goes_no_further_than_it_should(
    datagrams: list[tuple[bytes, bytes | None]],
) -> None:
    """Whatever an authenticated peer sends (lying lengths, garbage Opus in the packet the
    compiled path is waiting for), each datagram is counted once and nothing raises."""

    async def run() -> None:
        wire = Wire()
        wire.send(111, 1, 0, opus_packets()[0])
        seq, sent = 2, 1
        for data, payload in datagrams:
            if payload is not None:
                data = wire.rtp(111, seq, 960 * (seq - 1), payload)
                seq += 1
            try:
                protected = wire.tx.protect(data)
            except pylibsrtp.Error:
                continue  # libsrtp will not even protect it
            wire.inbound.receive(protected)
            sent += 1
        inbound = wire.inbound
        assert inbound.rx_packets == sent and wire.errors == []
        assert (
            inbound.malformed + inbound.auth_failures + len(wire.slow) + inbound.fast_packets
            == sent
        )

    asyncio.run(run())


# --- outbound: the route ---------------------------------------------------------------------


class Holder:
    """Stands in for a CallTransport: the route the stream reads per packet."""

    def __init__(self, route: Any) -> None:
        self._native_route = route


def route_to(receiver: socket.socket, sender: socket.socket, tx: Session, **kw: Any) -> Any:
    host, port = receiver.getsockname()
    return _rtp.Route(
        native.srtp_function("srtp_protect"),
        native.srtp_session(tx),
        tx,
        sender,
        kw.pop("host", host),
        port,
        kw.pop("fallback", print),
    )


def stream(holder: object, extensions: bytes = b"") -> Any:
    return _rtp.Outbound(
        holder, 0x90 if extensions else 0x80, 0x80 | 111, 0x1234, extensions, 65534, 0xFFFFFF00
    )


def test_the_route_sends_what_pylibsrtp_and_the_python_stream_give() -> None:
    extensions = b"\xbe\xde\x00\x01\x91\x61\x00\x00"  # the mid, as aiortc serializes it
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        b.settimeout(2)
        tx, rx = sessions()
        reference_tx, _ = sessions()
        route = route_to(b, a, tx)
        ours = stream(Holder(route), extensions)
        python = native.PythonOutbound(
            None, 0x90, 0x80 | 111, 0x1234, extensions, 65534, 0xFFFFFF00
        )
        for i in range(5):
            payload = bytes([i]) * (10 + i)
            assert ours.send(payload, 960 * i) is None
            clear = python.send(payload, 960 * i)
            assert clear is not None
            wire = b.recv(2000)
            assert wire == reference_tx.protect(clear)
            assert rx.unprotect(wire) == clear
        assert (ours.sequence_number, python.sequence_number) == (3, 3)  # wrapped
        assert (ours.packets, ours.octets) == (python.packets, python.octets) == (5, 60)
        assert ours.rtp_timestamp == python.rtp_timestamp == (0xFFFFFF00 + 3840) & 0xFFFFFFFF
        assert abs(ours.ntp_timestamp - python.ntp_timestamp) < 1 << 32  # within a second
        assert route.tx_packets == 5 and route.fallbacks == 0


def test_without_an_open_route_the_packet_comes_back_in_clear() -> None:
    python = native.PythonOutbound(None, 0x80, 0x80 | 111, 0x1234, b"", 65534, 0xFFFFFF00)
    ours = stream(Holder(None))
    for i in range(3):
        assert ours.send(b"abc", 960 * i) == python.send(b"abc", 960 * i)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
        a.bind(("127.0.0.1", 0))
        route = route_to(a, a, sessions()[0])
        route.close()
        assert stream(Holder(route)).send(b"abc", 0) is not None


def test_a_send_that_fails_goes_through_asyncio_and_keeps_order() -> None:
    fallback: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
        a.bind(("127.0.0.1", 0))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        route = route_to(a, sender, sessions()[0], fallback=fallback.append)
        sender.close()  # fileno() is -1 from now on
        ours = stream(Holder(route))
        ours.send(b"one", 0)
        assert route.backlog and len(fallback) == 1
        ours.send(b"two", 960)  # still through asyncio: its buffer may hold the first
        assert len(fallback) == 2 and route.fallbacks == 2 and route.tx_packets == 2


def test_route_and_stream_refuse_what_they_cannot_send() -> None:
    tx, _ = sessions()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
        a.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="numeric"):
            route_to(a, a, tx, host="relay.example")
        route = route_to(a, a, tx)
        with pytest.raises(ValueError, match="too long"):
            stream(Holder(route)).send(bytes(1400), 0)
    with pytest.raises(ValueError):
        stream(Holder(None), b"\xbe\xde\x00")  # not whole words
    with pytest.raises(TypeError):
        stream(Holder(None)).send("abc", 0)  # type: ignore[arg-type]


async def test_frames_decoded_in_c_are_fresh_arrays(opus: list[bytes]) -> None:
    wire = Wire()
    for i in range(4):
        wire.send(111, i, 960 * i, opus[i])
    assert len({id(f) for f in wire.frames}) == 4
    assert not any(np.shares_memory(a, b) for a in wire.frames for b in wire.frames if a is not b)


# --- both directions between two real peers ----------------------------------------------


@pytest.mark.usefixtures("loopback", "telephone_events")
async def test_speech_and_dtmf_through_the_compiled_path_both_ways() -> None:
    """A PlayoutSender on a CallTransport sends through the C route (and through the
    Python path while DTMF rewrites packets); the other side's CallTransport decodes in
    C: every frame arrives, the digits too, and RTCP reports count every packet."""
    speech = load_wav(AUDIO / "cards-005.wav")[: 16000 * 2]
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    gateway = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        sent: list[bool] = []
        track = PlayoutTrack(on_frame_sent=lambda pts, is_speech: sent.append(is_speech))
        sender = PlayoutSender.adopt(caller.addTrack(track))
        out = CallTransport.adopt(sender.transport)
        await caller.setLocalDescription(await caller.createOffer())
        await gateway.setRemoteDescription(caller.localDescription)
        receiver = gateway.getTransceivers()[0].receiver
        into = CallTransport.adopt(receiver.transport)
        await gateway.setLocalDescription(await gateway.createAnswer())
        opus_pt = re.search(r"a=rtpmap:(\d+) opus/48000/2", gateway.localDescription.sdp)
        assert opus_pt is not None
        received: list[NDArray[np.int16]] = []
        digits: list[tuple[str, int]] = []
        inbound = InboundAudio(
            receiver,
            received.append,
            lambda digit, ms: digits.append((digit, ms)),
            opus_pt=int(opus_pt.group(1)),
        )
        inbound.attach()
        await caller.setRemoteDescription(gateway.localDescription)
        await connected(caller)
        await connected(gateway)
        assert out._route is not None and out._native_route is out._route

        await asyncio.wait_for(track.play(speech).wait(), 20)
        await DtmfSender(sender).send("42")
        assert out._native_route is out._route  # the rewrite is over: C sends again
        await asyncio.wait_for(track.play(speech[:8000]).wait(), 20)
        await asyncio.sleep(0.2)

        skipped = track.stats.skipped_frames
        assert len(sent) - 8 <= len(received) + skipped <= len(sent) + skipped  # 8: DTMF
        assert {len(f) for f in received} == {FRAME_SAMPLES}
        assert (inbound.stats.late, inbound.stats.decode_errors) == (0, 0)
        assert digits == [("4", 160), ("2", 160)]
        wire = into._native_in
        assert wire is not None and wire.fast_packets > len(received) // 2
        assert out._route.tx_packets > len(received) // 2 and out._route.fallbacks == 0

        # RTCP: the sender's reports count what C sent, the receiver's what C received.
        for _ in range(60):
            stats = (await sender.getStats()).values()
            reports = [s for s in stats if s.type == "remote-inbound-rtp"]
            if reports:
                break
            await asyncio.sleep(0.1)
        assert reports and reports[0].packetsLost == 0
        sent_stats = next(s for s in stats if s.type == "outbound-rtp")
        assert sent_stats.packetsSent == sender._stream.packets >= len(received)
        transport_stats = [s for s in (await sender.getStats()).values() if s.type == "transport"]
        assert transport_stats[0].packetsSent >= out._route.tx_packets
    finally:
        await caller.close()
        await gateway.close()
    assert not out._route.open
