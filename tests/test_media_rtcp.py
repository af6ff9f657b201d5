"""RTCP without aiortc's per-report Python: the same bytes out, the same effects in."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import random
import socket
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, clock
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from aiortc.rtcdtlstransport import RtpRouter
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pylibsrtp import Policy, Session

from gateway.media import native, reports, rtcp
from gateway.media.native import NativeStreamStatistics, _rtp
from gateway.media.reports import Reporter, ReportingReceiver, ReportSchedule
from gateway.media.sender import PlayoutSender

from .peers import answer_as_gateway, connected

# --- parsing: what aiortc's parser accepts, read the same --------------------------------


def theirs(data: bytes) -> list[Any] | None:
    """aiortc's reading of a compound, as rtcp.parse's tuples (None: refused or feedback)."""
    try:
        packets = RtcpPacket.parse(data)
    except ValueError:
        return None
    out: list[Any] = []
    for p in packets:
        blocks = [
            (b.ssrc, b.fraction_lost, b.packets_lost, b.highest_sequence, b.jitter, b.lsr, b.dlsr)
            for b in getattr(p, "reports", [])
        ]
        if isinstance(p, RtcpSrPacket):
            i = p.sender_info
            out.append(
                (
                    rtcp.SR,
                    p.ssrc,
                    i.ntp_timestamp,
                    i.rtp_timestamp,
                    i.packet_count,
                    i.octet_count,
                    blocks,
                )
            )
        elif isinstance(p, RtcpRrPacket):
            out.append((rtcp.RR, p.ssrc, blocks))
        elif isinstance(p, RtcpByePacket):
            out.append((rtcp.BYE, p.sources))
        elif isinstance(p, (RtcpRtpfbPacket, RtcpPsfbPacket)):
            return None
    return out


u32 = st.integers(0, 0xFFFFFFFF)
blocks = st.lists(
    st.builds(
        RtcpReceiverInfo,
        u32,
        st.integers(0, 255),
        st.integers(-(1 << 23), (1 << 23) - 1),
        u32,
        u32,
        u32,
        u32,
    ),
    max_size=3,
)
one_packet = st.one_of(
    st.builds(
        RtcpSrPacket,
        u32,
        st.builds(RtcpSenderInfo, st.integers(0, (1 << 64) - 1), u32, u32, u32),
        blocks,
    ),
    st.builds(RtcpRrPacket, u32, blocks),
    st.builds(RtcpByePacket, st.lists(u32, max_size=3)),
    st.builds(
        RtcpSdesPacket,
        st.lists(
            st.builds(
                RtcpSourceInfo,
                u32,
                st.lists(st.tuples(st.integers(1, 8), st.binary(max_size=20)), max_size=2),
            ),
            max_size=2,
        ),
    ),
    st.builds(
        RtcpRtpfbPacket,
        st.integers(0, 31),
        u32,
        u32,
        st.lists(st.integers(0, 65535), max_size=3, unique=True).map(sorted),
    ),
    st.builds(
        RtcpPsfbPacket,
        st.integers(0, 31),
        u32,
        u32,
        st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4)),
    ),
)


@st.composite
def compounds(draw: st.DrawFn) -> bytes:
    data = b"".join(bytes(p) for p in draw(st.lists(one_packet, min_size=1, max_size=4)))
    if draw(st.booleans()):  # an unknown packet type (APP, XR) in between
        data += bytes([0x80, draw(st.sampled_from([204, 207, 210])), 0, 1]) + bytes(4)
    match draw(st.integers(0, 5)):
        case 0:  # a byte changed anywhere
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
        case 1:  # cut short
            data = data[: draw(st.integers(0, len(data)))]
        case 2:  # a padding bit with whatever the last byte says
            data = bytes([data[0] | 0x20]) + data[1:]
        case 3:
            data += draw(st.binary(max_size=8))
    return data


@settings(max_examples=300, deadline=None)
@given(compounds())
def test_the_parser_reads_what_aiortcs_reads_and_refuses_what_it_refuses(data: bytes) -> None:
    assert rtcp.parse(data) == theirs(data)


def test_feedback_and_garbage_are_left_to_aiortc() -> None:
    nack = bytes(RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=2, lost=[5]))
    for data in (nack, b"\x80\xc9\x00\x07" + bytes(8), b"\x40\xc8\x00\x00", b"\x80"):
        assert rtcp.parse(data) is None


# --- reports out: aiortc's bytes, from the same state --------------------------------------


class FixedTime:
    """The wall clock of aiortc's and our report code, stopped (dlsr, lsr_time)."""

    now = 1_700_000_000.0

    @classmethod
    def time(cls) -> float:
        return cls.now


class Wire:
    """Records what a sender or receiver sends (aiortc's ``_send_rtp``, our ``send_rtcp_now``)
    and changes the reported state the same way after each report."""

    state = "connected"
    _stats_id = "transport_1"

    def __init__(self, after: Any, lean: bool) -> None:
        self.sent: list[tuple[float, bytes]] = []
        self.after = after
        if lean:
            self.send_rtcp_now = self.record

    def record(self, data: bytes) -> None:
        self.sent.append((asyncio.get_running_loop().time(), data))
        self.after(len(self.sent))

    async def _send_rtp(self, data: bytes) -> None:
        self.record(data)

    def _register_rtp_sender(self, *args: Any) -> None:
        pass


SEED = 952  # its first draws are small: reports 0.5-0.7 s apart, a short test


async def run_both(
    make: Any, count: int, monkeypatch: pytest.MonkeyPatch, module: str
) -> tuple[Wire, Wire, Any, Any]:
    for name in (module, "gateway.media.reports"):
        monkeypatch.setattr(f"{name}.time", FixedTime)
    monkeypatch.setattr(f"{module}.random", random.Random(SEED))
    monkeypatch.setattr(reports, "random", random.Random(SEED))
    stock, lean = make(False), make(True)
    tasks = [asyncio.ensure_future(o._run_rtcp()) for o in (stock[1], lean[1])]
    while len(stock[0].sent) < count or len(lean[0].sent) < count:
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks)
    return stock[0], lean[0], stock[1], lean[1]


def intervals_match_the_draws(wire: Wire, count: int, tolerance: float) -> None:
    seeded = random.Random(SEED)
    drawn = [0.5 + seeded.random() for _ in range(count)]
    times = [t for t, _ in wire.sent[:count]]
    # Each report after the one before (the first: only its lateness is unknown).
    for draw, before, after in zip(drawn[1:], times[:-1], times[1:], strict=True):
        assert draw - 0.002 <= after - before <= draw + tolerance


async def test_sender_reports_and_bye_are_aiortcs_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    def make(lean: bool) -> tuple[Wire, RTCRtpSender]:
        def after(n: int) -> None:  # the stream went on between two reports
            sender._RTCRtpSender__ntp_timestamp += n << 32
            rtp = sender._RTCRtpSender__rtp_timestamp + 960 * n
            sender._RTCRtpSender__rtp_timestamp = rtp & 0xFFFFFFFF
            sender._RTCRtpSender__packet_count += 50 * n
            sender._RTCRtpSender__octet_count += (1 << 32) - 7  # wraps in the report

        wire = Wire(after, lean)
        sender = RTCRtpSender("audio", wire)  # type: ignore[arg-type]
        if lean:
            sender = PlayoutSender.adopt(sender)
        sender._ssrc = 0x1234ABCD
        sender._RTCRtpSender__cname = "{gateway-cname-é}"
        sender._RTCRtpSender__ntp_timestamp = 0xE000_0000_1234_5678
        sender._RTCRtpSender__rtp_timestamp = 0xFFFF_FC00
        return wire, sender

    module = "aiortc.rtcrtpsender"
    stock, lean, stock_sender, lean_sender = await run_both(make, 3, monkeypatch, module)
    assert [d for _, d in lean.sent] == [d for _, d in stock.sent]
    assert len(stock.sent) == 4 and stock.sent[-1][1] == bytes(RtcpByePacket(sources=[0x1234ABCD]))
    assert stock.sent[0][1][0:2] == b"\x80\xc8" and b"gateway-cname" in stock.sent[0][1]
    # What the round-trip time is computed from.
    for name in ("_RTCRtpSender__lsr", "_RTCRtpSender__lsr_time"):
        assert getattr(lean_sender, name) == getattr(stock_sender, name) is not None
    intervals_match_the_draws(stock, 3, 0.25)
    intervals_match_the_draws(lean, 3, 0.25)


async def test_receiver_reports_are_aiortcs_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    def make(lean: bool) -> tuple[Wire, RTCRtpReceiver]:
        streams = {0x1111: StreamStatistics(48000), 0x2222: StreamStatistics(48000)}
        seq = {0x1111: 65500, 0x2222: 10}

        def feed(packets: int, skip: int) -> None:
            for ssrc, stream in streams.items():
                for _ in range(packets):
                    seq[ssrc] = (seq[ssrc] + 1 + skip) & 0xFFFF  # losses, a wrap
                    packet = RtpPacket(sequence_number=seq[ssrc], timestamp=seq[ssrc] * 960)
                    packet.ssrc = ssrc
                    stream.add(packet)

        wire = Wire(lambda n: feed(30, n % 2), lean)
        receiver = RTCRtpReceiver("audio", wire)  # type: ignore[arg-type]
        if lean:
            receiver = ReportingReceiver.adopt(receiver)
        receiver._set_rtcp_ssrc(0xABCDEF01)
        receiver._RTCRtpReceiver__remote_streams = streams
        receiver._RTCRtpReceiver__lsr[0x1111] = 0x12345678  # an SR came from one of them
        receiver._RTCRtpReceiver__lsr_time[0x1111] = FixedTime.now - 0.25
        feed(40, 0)
        return wire, receiver

    stock, lean, _, _ = await run_both(make, 3, monkeypatch, "aiortc.rtcrtpreceiver")
    assert [d for _, d in lean.sent[:3]] == [d for _, d in stock.sent[:3]]
    first = RtcpPacket.parse(stock.sent[1][1])[0]
    assert isinstance(first, RtcpRrPacket) and len(first.reports) == 2
    assert (first.reports[0].lsr, first.reports[0].dlsr) == (0x12345678, 0x4000)
    assert first.reports[0].fraction_lost > 0  # the second interval lost packets
    intervals_match_the_draws(stock, 3, 0.25)
    intervals_match_the_draws(lean, 3, 0.25)


async def test_a_receiver_without_streams_or_rtcp_ssrc_sends_nothing() -> None:
    wire = Wire(lambda n: None, True)
    receiver = ReportingReceiver.adopt(RTCRtpReceiver("audio", wire))  # type: ignore[arg-type]
    reports.ReceiverReports(receiver, wire).report()  # type: ignore[arg-type]
    receiver._RTCRtpReceiver__remote_streams[5] = StreamStatistics(48000)
    receiver._RTCRtpReceiver__remote_streams[5].add(RtpPacket(sequence_number=1, ssrc=5))
    reports.ReceiverReports(receiver, wire).report()  # type: ignore[arg-type]
    assert wire.sent == []


def test_only_aiortcs_own_receiver_is_adopted() -> None:
    class Other(RTCRtpReceiver):
        pass

    with pytest.raises(TypeError):
        ReportingReceiver.adopt(Other.__new__(Other))


# --- the schedule -------------------------------------------------------------------------


class Counting(Reporter):
    def __init__(self, fail: BaseException | None = None) -> None:
        super().__init__(self)  # type: ignore[arg-type]
        self.reports = 0
        self.fail = fail

    def report(self) -> None:
        self.reports += 1
        self.send(b"")

    def send_rtcp_now(self, data: bytes) -> None:
        if self.fail is not None:
            raise self.fail


class Clock:
    def __init__(self) -> None:
        self.subscribed: list[Any] = []
        self.last: list[Any] = []

    def subscribe(self, callback: Any, *, last: bool = False) -> None:
        self.subscribed.append(callback)
        if last:
            self.last.append(callback)

    def unsubscribe(self, callback: Any) -> None:
        self.subscribed.remove(callback)


async def test_the_schedule_draws_aiortcs_intervals_and_drops_a_failing_reporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(reports, "frame_clock", lambda loop: clock)
    monkeypatch.setattr(reports, "random", random.Random(3))
    draws = random.Random(3)
    schedule = ReportSchedule(asyncio.get_running_loop())
    start = asyncio.get_running_loop().time()
    good, broken, closed = Counting(), Counting(RuntimeError("bug")), Counting(ConnectionError())
    for reporter in (good, broken, closed):
        schedule.add(reporter)
    assert clock.subscribed == [schedule._on_tick] and schedule.reporters == 3
    assert clock.last == [schedule._on_tick]  # after every call's frames
    due = sorted(start + 0.5 + draws.random() for _ in range(3))
    schedule._on_tick(due[0] - 0.001)
    assert good.reports + broken.reports + closed.reports == 0  # never early
    schedule._on_tick(start + 2.0)  # all three were due
    assert (good.reports, broken.reports, closed.reports) == (1, 1, 1)
    assert schedule.reporters == 2  # the broken one is off; the closed one goes on
    schedule._on_tick(start + 2.0 + 0.4999)
    assert good.reports == 1
    schedule._on_tick(start + 2.0 + 1.5)
    assert (good.reports, broken.reports, closed.reports) == (2, 1, 2)
    schedule.remove(good)
    assert [entry[2] for entry in schedule._due] == [closed]  # nothing kept of a removed one
    schedule.add(good)  # taken off and put back: one live entry, not two
    schedule._on_tick(start + 10)
    assert good.reports == 3
    schedule.remove(good)
    schedule.remove(closed)
    assert clock.subscribed == [] and schedule.reporters == 0


# --- real peers ---------------------------------------------------------------------------


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
async def test_reports_both_ways_with_a_real_aiortc_peer(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway-side connection (CallTransport, PlayoutSender, ReportingReceiver) and a
    stock aiortc caller: each side's reports reach the other (round-trip times on both,
    the lsr each receiver keeps is what the other's sender sent), none through aiortc's
    RTCP task on the gateway's side; malformed RTCP and feedback go to aiortc's handler
    and media goes on; the caller's BYE ends the receiver's track as aiortc's decoder does;
    nothing is left scheduled once the connections close. With the extension, SRTCP
    goes both ways in C (the route's send_rtcp, the port's on_rtcp); without, in Python."""
    if not compiled:
        monkeypatch.setattr(native, "available", lambda: False)
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    gateway = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    loop = asyncio.get_running_loop()
    schedule = reports.report_schedule(loop)
    try:
        caller_sender = caller.addTrack(AudioStreamTrack())  # aiortc's silence, Opus-encoded
        side = await answer_as_gateway(caller, gateway)
        sender, receiver, transport = side.sender, side.receiver, side.transport
        frames = side.frames
        sent: list[tuple[float, int]] = []  # (loop time, packet type) of each compound we send
        send_rtcp_now = transport.send_rtcp_now

        def recording(data: bytes) -> None:
            sent.append((loop.time(), data[1]))
            send_rtcp_now(data)

        transport.send_rtcp_now = recording  # type: ignore[method-assign]
        to_aiortc: list[bytes] = []
        aiortc_rtcp = transport._handle_rtcp_data

        async def handle_rtcp(data: bytes) -> None:
            to_aiortc.append(data)
            await aiortc_rtcp(data)

        transport._handle_rtcp_data = handle_rtcp  # type: ignore[method-assign]
        python_rtcp: list[bytes] = []  # SRTCP unprotected by the Python path
        rtcp_received = transport._rtcp_received

        def python_received(data: bytes) -> None:
            python_rtcp.append(data)
            rtcp_received(data)

        transport._rtcp_received = python_received  # type: ignore[method-assign]
        await caller.setRemoteDescription(gateway.localDescription)
        await connected(caller)
        await connected(gateway)
        assert schedule.reporters == 2  # the gateway's sender and receiver

        def rtt(stats: Any) -> float | None:
            remote = [s for s in stats.values() if s.type == "remote-inbound-rtp"]
            return remote[0].roundTripTime if remote else None

        for _ in range(100):
            ours, theirs_ = await sender.getStats(), await caller_sender.getStats()
            kinds = [k for _, k in sent]
            if (
                rtt(ours) is not None
                and rtt(theirs_) is not None
                and min(kinds.count(rtcp.SR), kinds.count(rtcp.RR)) >= 3
            ):
                break
            await asyncio.sleep(0.1)
        assert 0 <= rtt(ours) < 1 and 0 <= rtt(theirs_) < 1  # type: ignore[operator]
        assert any(s.type == "remote-outbound-rtp" for s in (await receiver.getStats()).values())
        caller_receiver = caller.getTransceivers()[0].receiver

        def lsr_pairs() -> list[tuple[int | None, int | None]]:
            return [
                (caller_receiver._RTCRtpReceiver__lsr.get(sender._ssrc), sender._RTCRtpSender__lsr),
                (
                    receiver._RTCRtpReceiver__lsr.get(caller_sender._ssrc),
                    caller_sender._RTCRtpSender__lsr,
                ),
            ]

        for _ in range(50):  # a sender report may be in flight (read at the next tick): let it land
            if all(kept == sent_lsr for kept, sent_lsr in lsr_pairs()):
                break
            await asyncio.sleep(0.02)
        for kept, sent_lsr in lsr_pairs():
            assert kept == sent_lsr
        assert to_aiortc == []  # every SR and RR was read in the socket's callback
        route = transport._route
        if compiled:  # every compound sent by the C route, every one received by the port
            assert route is not None and route.tx_packets == sender._stream.packets + len(sent)
            assert python_rtcp == []
        else:
            assert route is None and len(python_rtcp) >= 2
        assert {kind for _, kind in sent} == {rtcp.SR, rtcp.RR}
        for kind in (rtcp.SR, rtcp.RR):
            times = [t for t, k in sent if k == kind]
            assert len(times) >= 3 and all(
                0.5 <= b - a < 1.5 + 0.25 for a, b in itertools.pairwise(times)
            )

        # Garbage that authenticates, and a NACK: aiortc's handler has them; media goes on.
        caller_transport = caller_sender.transport
        nack = bytes(RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=sender._ssrc, lost=[1, 2]))
        for data in (b"\x80\xc9\x00\x07" + bytes(8), nack):
            await caller_transport._send_rtp(data)
        count = len(frames)
        for _ in range(50):
            if len(to_aiortc) == 2 and len(frames) > count + 5:
                break
            await asyncio.sleep(0.05)
        assert len(to_aiortc) == 2 and len(frames) > count + 5
        assert gateway.connectionState == "connected"

        # The caller's BYE (its sender stops): the receiver stops decoding, as in aiortc; with
        # InboundAudio taking the packets it never started a decoder thread, and its track ends.
        assert not receiver.decoding
        await caller_sender.stop()
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(receiver.track.recv(), 5)
        assert not receiver.decoding
    finally:
        await caller.close()
        await gateway.close()
    assert schedule.reporters == 0
    assert not transport._spawned
    assert sender._RTCRtpSender__rtcp_task.done() and receiver._RTCRtpReceiver__rtcp_task.done()


# --- effects in: aiortc's handlers' changes, field for field -------------------------------


class FakeDecoder:
    """Stands in for the receiver's decoder thread, which a BYE stops."""

    def join(self) -> None:
        pass


def twin(lean: bool) -> tuple[RtpRouter, Any, Any]:
    wire = Wire(lambda n: None, False)
    sender = RTCRtpSender("audio", wire)  # type: ignore[arg-type]
    receiver = RTCRtpReceiver("audio", wire)  # type: ignore[arg-type]
    if lean:
        sender, receiver = PlayoutSender.adopt(sender), ReportingReceiver.adopt(receiver)
    sender._ssrc = 0xAAAA
    sender._RTCRtpSender__packet_count = 500
    sender._RTCRtpSender__lsr = 0x11112222
    sender._RTCRtpSender__lsr_time = FixedTime.now - 0.125
    receiver._RTCRtpReceiver__decoder_thread = FakeDecoder()
    router = RtpRouter()
    router.register_sender(sender, sender._ssrc)
    router.register_receiver(receiver, ssrcs=[0xBBBB], payload_types=[111])
    return router, sender, receiver


def state(sender: Any, receiver: Any) -> list[Any]:
    def stats(report: Any, owner: Any) -> list[Any]:
        rtcp.add_stats(owner, report)  # what getStats adds first
        return [(type(s), {k: v for k, v in vars(s).items() if k != "id"}) for s in report.values()]

    return [
        sender._RTCRtpSender__rtt,
        stats(sender._RTCRtpSender__stats, sender),
        dict(receiver._RTCRtpReceiver__lsr),
        dict(receiver._RTCRtpReceiver__lsr_time),
        stats(receiver._RTCRtpReceiver__stats, receiver),
        receiver._RTCRtpReceiver__decoder_thread is None,
    ]


async def test_the_effects_of_sr_rr_and_bye_are_aiortcs_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("aiortc.rtcrtpsender", "aiortc.rtcrtpreceiver", "gateway.media.rtcp"):
        monkeypatch.setattr(f"{name}.time", FixedTime)
    # aiortc stamps its stats when it reads the packet; ours, made on demand, say the same.
    moment = datetime.datetime.fromtimestamp(FixedTime.now, datetime.UTC)
    monkeypatch.setattr(clock, "current_datetime", lambda: moment)

    def block(ssrc: int, lsr: int, dlsr: int, lost: int = 3) -> RtcpReceiverInfo:
        return RtcpReceiverInfo(ssrc, 12, lost, 4000, 77, lsr, dlsr)

    info = RtcpSenderInfo(0xE1234567_89ABCDEF, 5, 60, 7000)
    compounds = [
        RtcpRrPacket(0xBBBB, [block(0xAAAA, 0x11112222, 0x2000)]),  # an RTT
        RtcpRrPacket(0xBBBB, [block(0xAAAA, 0x11112222, 0x1000, -2), block(0xCCCC, 1, 1)]),
        RtcpRrPacket(0xBBBB, [block(0xAAAA, 0x99, 0x1000)]),  # not our last SR: no RTT
        RtcpSrPacket(0xBBBB, info, [block(0xAAAA, 0x11112222, 0)]),  # dlsr 0: no RTT
        RtcpSrPacket(0xDDDD, info),  # an SSRC nobody receives
    ]
    data = [
        bytes(c) + bytes(RtcpSdesPacket([RtcpSourceInfo(0xBBBB, [(1, b"peer")])]))
        for c in compounds
    ] + [bytes(RtcpByePacket([0xBBBB]))]
    lean, stock = twin(True), twin(False)
    for compound in data:
        assert rtcp.apply(lean[0], compound)
        for packet in RtcpPacket.parse(compound):
            for recipient in stock[0].route_rtcp(packet):
                await recipient._handle_rtcp_packet(packet)
        assert state(*lean[1:]) == state(*stock[1:])
    assert stock[1]._RTCRtpSender__rtt is not None and state(*stock[1:])[-1]


# --- the compiled path: SRTCP in C, the bytes of pylibsrtp -------------------------------


def srtp_pair() -> tuple[Session, Session]:
    key = bytes(range(30))
    return (
        Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)),
        Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)),
    )


@pytest.mark.skipif(not native.available(), reason="the extension is not built")
def test_the_route_sends_rtcp_as_pylibsrtp_protects_it() -> None:
    compounds = [
        rtcp.sender_report(0x1234, i << 32, i, i, i, rtcp.sdes_cname(0x1234, "c" * i))
        for i in range(6)
    ]
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        b.settimeout(2)
        (tx, rx), (reference, _) = srtp_pair(), srtp_pair()
        route = _rtp.Route(
            native.srtp_function("srtp_protect"),
            native.srtp_session(tx),
            tx,
            a,
            *b.getsockname(),
            print,
            native.srtp_function("srtp_protect_rtcp"),
        )
        for compound in compounds:  # the SRTCP index goes up: every packet differs
            route.send_rtcp(compound)
            wire = b.recv(2000)
            assert wire == reference.protect_rtcp(compound)
            assert rx.unprotect_rtcp(wire) == compound
        assert route.tx_packets == len(compounds)
        with pytest.raises(ValueError):
            route.send_rtcp(bytes(1500 - 147))
        route.close()
        with pytest.raises(ConnectionError):
            route.send_rtcp(compounds[0])
        without = _rtp.Route(
            native.srtp_function("srtp_protect"),
            native.srtp_session(tx),
            tx,
            a,
            "127.0.0.1",
            9,
            print,
        )
        with pytest.raises(RuntimeError):
            without.send_rtcp(compounds[0])


@pytest.mark.skipif(not native.available(), reason="the extension is not built")
def test_the_port_unprotects_rtcp_for_on_rtcp_and_drops_what_fails() -> None:
    (tx, rx), rtcp_seen, other, errors = srtp_pair(), [], [], []
    inbound = _rtp.Inbound(
        native.srtp_function("srtp_unprotect"),
        native.srtp_session(rx),
        rx,
        lambda data, ms: None,
        errors.append,
        native.srtp_function("srtp_unprotect_rtcp"),
        rtcp_seen.append,
    )
    port = _rtp.Port(inbound, lambda data, addr: other.append(data))
    sr = rtcp.sender_report(0x1234, 1 << 32, 2, 3, 4)
    protected = tx.protect_rtcp(sr)
    port(protected, ("127.0.0.1", 1))
    port(protected, ("127.0.0.1", 1))  # a replay: refused by libsrtp
    port(protected[:-1] + bytes([protected[-1] ^ 1]), ("127.0.0.1", 1))  # tampered
    port(b"\x00\x01stun", ("127.0.0.1", 1))
    assert rtcp_seen == [sr] and other == [b"\x00\x01stun"] and errors == []
    assert inbound.rx_packets == 3 and inbound.auth_failures == 2
    tx2, rx2 = srtp_pair()
    failing = _rtp.Inbound(
        native.srtp_function("srtp_unprotect"),
        native.srtp_session(rx2),
        rx2,
        lambda data, ms: None,
        errors.append,
        native.srtp_function("srtp_unprotect_rtcp"),
        lambda data: 1 / 0,
    )
    _rtp.Port(failing, print)(tx2.protect_rtcp(sr), ("127.0.0.1", 1))
    assert [type(e) for e in errors] == [ZeroDivisionError]  # reported, not raised
    with pytest.raises(TypeError):
        _rtp.Inbound(1, 1, rx, print, print, 1)  # unprotect_rtcp without on_rtcp


async def test_stats_made_on_demand_never_replace_newer_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.media.rtcp.time", FixedTime)
    router, sender, _ = twin(True)
    rr = bytes(RtcpRrPacket(0xBBBB, [RtcpReceiverInfo(0xAAAA, 0, 4, 0, 0, 0, 0)]))
    report = sender._RTCRtpSender__stats
    for offset, kept in ((1.0, "aiortc's"), (-1.0, "ours")):
        assert rtcp.apply(router, rr)
        # What aiortc's own handler would have added (RTCP over a TURN relay), later or earlier.
        at = datetime.datetime.fromtimestamp(FixedTime.now + offset, datetime.UTC)
        report.add(rtcp._remote_inbound(sender, at, 0xBBBB, 1, 99, 0, None, 0))
        rtcp.add_stats(sender, report)
        (stats,) = report.values()
        assert stats.packetsLost == (99 if kept == "aiortc's" else 4)
        assert "_rtcp_stats" not in sender.__dict__  # taken


class Fields:
    """Stands in for an _rtp.Inbound: the reception fields C keeps, set by the test."""

    def __init__(self) -> None:
        self.fields = (0, 0, 0, 0, 0)

    def statistics(self) -> tuple[int, int, int, int, int]:
        return self.fields


def test_one_read_of_cs_statistics_gives_what_aiortcs_properties_give() -> None:
    fields = Fields()
    ours, theirs_ = (NativeStreamStatistics(fields), NativeStreamStatistics(fields))  # type: ignore[arg-type]
    rng = random.Random(5)
    base, top, cycles, received, jitter = 65000, 65000, 0, 1, 0
    for _ in range(200):  # losses, duplicates (more received than expected), wraps
        step = rng.choice([0, 1, 1, 1, 5, 300])
        top += step
        cycles, top = (cycles + (1 << 16), top - (1 << 16)) if top > 0xFFFF else (cycles, top)
        received += max(0, step + rng.choice([-3, -1, 0, 0, 2]))
        jitter = rng.randrange(1 << 12)
        fields.fields = (base, top, cycles, received, jitter)
        values = (theirs_.fraction_lost, theirs_.packets_lost, theirs_.max_seq, theirs_.jitter)
        assert ours.report_values() == values
    for fields.fields in ((0, 5, 1 << 24, 1, 0), (0, 5, 0, 1 << 24, 0)):  # lost beyond 24 bits
        values = (theirs_.fraction_lost, theirs_.packets_lost, theirs_.max_seq, theirs_.jitter)
        assert ours.report_values() == values
