"""Media sockets read at the frame clock's tick (gateway/media/tickread.py, _rtp.Reader).

The C drain hands each datagram to the socket's Port as asyncio would (RTP to the
compiled path, anything else to aioice with asyncio's address), a burst larger than
the per-tick cap is read over the next ticks without a loss, arrival times are the
kernel's, socket errors reach ``error_received``; a real call in tick mode hears
all its audio, keeps ICE consent, ends on a DTLS close, and its sockets are read by
asyncio again once its compiled path stops; arrival mode is today's.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import aioice.stun
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtp import RtpPacket
from numpy.typing import NDArray

from gateway.app import Gateway
from gateway.cli import main as cli_main
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.media import native, tickread
from gateway.media.frameclock import frame_clock
from gateway.media.opus import OpusDecoder
from gateway.media.transport import CallTransport

from .peers import answer_with_inbound, connected
from .test_config import ENV
from .test_media_native import SSRC, sessions
from .test_media_transport import speech_packets

_rtp = native._rtp


@pytest.fixture
def mode() -> Iterator[None]:
    """Restores the process's read mode after the test."""
    before = tickread.read_mode()
    yield
    tickread.set_read_mode(before)


def udp_pair() -> tuple[socket.socket, socket.socket]:
    """(sender, receiver) on loopback; the receiver non-blocking, as asyncio's are."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return sender, receiver


class Slow:
    """An Inbound whose every RTP packet goes to the Python path: (packet, arrival ms);
    with ``count``, that path counts it for RTCP as InboundAudio's statistics do."""

    def __init__(self, count: bool = False) -> None:
        self.tx, rx = sessions()
        self.packets: list[tuple[bytes, int]] = []
        self.errors: list[BaseException] = []
        self._count = count
        self.inbound = _rtp.Inbound(
            native.srtp_function("srtp_unprotect"),
            native.srtp_session(rx),
            rx,
            self._slow,
            self.errors.append,
        )
        self.other: list[tuple[bytes, Any]] = []
        self.port = _rtp.Port(self.inbound, lambda data, addr: self.other.append((data, addr)))

    def _slow(self, data: bytes, arrival_time_ms: int) -> None:
        self.packets.append((data, arrival_time_ms))
        if self._count:
            seq, timestamp = int.from_bytes(data[2:4], "big"), int.from_bytes(data[4:8], "big")
            self.inbound.count(seq, timestamp)

    def srtp(self, seq: int, timestamp: int = 0) -> bytes:
        packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=timestamp, ssrc=SSRC)
        packet.payload = seq.to_bytes(2, "big")
        return self.tx.protect(packet.serialize())

    def sequence_numbers(self) -> list[int]:
        return [int.from_bytes(data[12:14], "big") for data, _ in self.packets]


# --- the C drain ------------------------------------------------------------------------

STUN = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)
DTLS = b"\x16\xfe\xfd" + bytes(20)


def test_the_drain_dispatches_as_the_port_does_with_asyncios_addresses() -> None:
    """RTP to the compiled path, STUN and DTLS to `other` with the sender's address as
    socket.recvfrom gives it (IPv4 and IPv6), all in arrival order, without blocking."""
    slow, errors = Slow(), []
    reader = _rtp.Reader(errors.append)
    sender, receiver = udp_pair()
    for datagram in (slow.srtp(1), STUN, DTLS, slow.srtp(2)):
        sender.send(datagram)
    assert reader.drain(slow.port, receiver, errors.append, 64) == 4
    assert reader.drain(slow.port, receiver, errors.append, 64) == 0  # empty: no block
    assert slow.sequence_numbers() == [1, 2]
    assert slow.other == [(STUN, sender.getsockname()), (DTLS, sender.getsockname())]
    assert errors == slow.errors == []
    sender.close()
    receiver.close()

    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        v6.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    v6_sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    v6_sender.sendto(STUN, v6.getsockname())
    v6_sender.sendto(STUN, v6.getsockname())
    _, expected = v6.recvfrom(2048)  # what asyncio's recvfrom gives: a four-tuple
    v6.setblocking(False)
    assert reader.drain(slow.port, v6, errors.append, 64) == 1
    assert slow.other[-1] == (STUN, expected) and len(expected) == 4
    v6.close()
    v6_sender.close()


def test_a_burst_beyond_the_limit_is_read_at_the_next_drains_in_order() -> None:
    slow, errors = Slow(), []
    reader = _rtp.Reader(errors.append)
    sender, receiver = udp_pair()
    for seq in range(150):
        sender.send(slow.srtp(seq))
    reads = [reader.drain(slow.port, receiver, errors.append, 64) for _ in range(4)]
    assert reads == [64, 64, 22, 0]
    assert slow.sequence_numbers() == list(range(150))
    receiver.close()
    assert reader.drain(slow.port, receiver, errors.append, 64) == -1  # closed
    sender.close()


def stamping_at_receive(reader: Any, sender: socket.socket, receiver: socket.socket) -> None:
    """Waits until the kernel stamps datagrams as they arrive. Linux turns receive
    stamps on through deferred work (net_enable_timestamp); until that has run, a
    datagram is stamped when it is read, so on a loaded machine the first ones would
    look as if they had not waited at all. Probes go to their own Port."""
    probe, errors = Slow(), []
    for seq in range(100):
        before = reader.waited
        sender.send(probe.srtp(seq))
        time.sleep(0.02)
        assert reader.drain(probe.port, receiver, errors.append, 64) == 1
        if reader.waited - before >= 0.015:
            return
    raise AssertionError("the kernel never stamped a datagram before it was read")


def test_arrival_times_are_the_kernels_not_the_drains() -> None:
    """Packets sent 100 ms apart and read together: the Python path sees arrival times
    at least 100 ms apart, and the RTCP jitter of packets timestamped as they were sent
    stays far below what the drain's one instant would make it."""
    spacing = 4800  # 100 ms at 48 kHz
    slow, errors = Slow(count=True), []
    slow.inbound.track(SSRC)
    reader = _rtp.Reader(errors.append)
    sender, receiver = udp_pair()
    reader.timestamp_arrivals(receiver, True)
    stamping_at_receive(reader, sender, receiver)
    waited_before, kernel_times_before = reader.waited, reader.kernel_times
    for seq in range(6):
        if seq:
            time.sleep(spacing / 48000)  # the kernel stamps each send's own time
        sender.send(slow.srtp(seq, timestamp=seq * spacing))
    assert reader.drain(slow.port, receiver, errors.append, 64) == 6
    assert reader.kernel_times - kernel_times_before == 6
    assert (
        reader.waited - waited_before >= 0.5 + 0.4 + 0.3 + 0.2 + 0.1 - 0.01
    )  # what each waited, at least
    arrivals = [ms for _, ms in slow.packets]
    assert all(b - a >= 99 for a, b in itertools.pairwise(arrivals))
    at_drain_q4 = 0
    for _ in range(5):  # RFC 3550's estimator: gaps of 0 where the timestamps say 100 ms
        at_drain_q4 += spacing - ((at_drain_q4 + 8) >> 4)
    assert slow.inbound.statistics()[3] == 6
    assert slow.inbound.statistics()[4] < at_drain_q4 / 2
    assert errors == slow.errors == []
    sender.close()
    receiver.close()


def test_a_refused_send_reaches_error_received_and_reading_goes_on() -> None:
    """An ICMP port unreachable (ECONNREFUSED at the next read) goes to the protocol's
    error_received, as asyncio's _read_ready sends it; what comes after is read."""
    slow, errors = Slow(), []
    reader = _rtp.Reader(errors.append)
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    gone = closed.getsockname()
    closed.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sock.connect(gone)
    sock.send(b"anyone?")  # answered by ICMP port unreachable
    refused: list[OSError] = []
    assert reader.drain(slow.port, sock, refused.append, 64) == 1
    assert [type(e) for e in refused] == [ConnectionRefusedError]
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(gone)
    peer.sendto(slow.srtp(7), sock.getsockname())
    assert reader.drain(slow.port, sock, refused.append, 64) == 1
    assert slow.sequence_numbers() == [7] and len(refused) == 1 and errors == []
    sock.close()
    peer.close()


def test_a_failing_handler_is_reported_and_the_rest_is_read() -> None:
    slow, errors = Slow(), []
    reader = _rtp.Reader(errors.append)
    sender, receiver = udp_pair()

    def other(data: bytes, addr: Any) -> None:
        raise RuntimeError("aioice broke")

    port = _rtp.Port(slow.inbound, other)
    sender.send(STUN)
    sender.send(slow.srtp(1))
    assert reader.drain(port, receiver, errors.append, 64) == 2
    assert [str(e) for e in errors] == ["aioice broke"] and slow.sequence_numbers() == [1]
    sender.close()
    receiver.close()


# --- the tick reader ------------------------------------------------------------------------


class Endpoint(asyncio.DatagramProtocol):
    """A protocol on a real asyncio datagram transport, as aioice's StunProtocol is."""

    transport: asyncio.DatagramTransport

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)


async def endpoint() -> tuple[Endpoint, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(Endpoint, local_addr=("127.0.0.1", 0))
    return protocol, protocol.transport.get_extra_info("sockname")


async def until(condition: Any, seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
def compiled(request: pytest.FixtureRequest) -> bool:
    """A TickReader's turn read by one C call (drain_each) or by a Python step per socket."""
    return bool(request.param)


async def test_the_tick_reads_first_caps_each_socket_and_hands_back_to_asyncio(
    compiled: bool,
) -> None:
    """Registered: asyncio stops reading the socket, the frame clock's tick reads it
    before the subscribers already there (the senders), at most PER_TICK_LIMIT a tick,
    nothing lost; unregistered: asyncio reads it again."""
    clock = frame_clock(asyncio.get_running_loop())
    # However late the tick (a loaded machine), it reads before the senders here.
    reader = tickread.TickReader(clock, read_first=math.inf, compiled=compiled)
    assert reader.compiled is compiled
    slow = Slow()
    seen_by_sender: list[int] = []

    def send(now: float) -> None:
        seen_by_sender.append(len(slow.packets))

    clock.subscribe(send)
    protocol, address = await endpoint()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        count = tickread.PER_TICK_LIMIT * 2 + 10
        for seq in range(count):
            sender.sendto(slow.srtp(seq), address)
        assert reader.register(protocol, slow.port)  # type: ignore[arg-type]
        assert not protocol.transport.is_reading()  # type: ignore[attr-defined]
        assert len(slow.packets) == tickread.PER_TICK_LIMIT  # read at once, capped
        await until(lambda: len(slow.packets) == count)
        assert slow.sequence_numbers() == list(range(count))

        seen_by_sender.clear()
        sender.sendto(slow.srtp(count), address)
        await until(lambda: seen_by_sender)
        assert seen_by_sender[0] == count + 1  # read before the sender ran
        assert protocol.received == []

        reader.unregister(protocol)  # type: ignore[arg-type]
        assert protocol.transport.is_reading()  # type: ignore[attr-defined]
        assert reader.sockets == 0
        sender.sendto(b"after", address)
        await until(lambda: protocol.received)
        assert protocol.received == [b"after"]
    finally:
        clock.unsubscribe(send)
        sender.close()
        protocol.transport.close()


class ReadingTime:
    """A tick reader's clock on which each look at it (one per socket read) takes a unit:
    at a tick, the k-th look reads tick + late + k (``late``: how late the tick began)."""

    def __init__(self, late: float = 0.0) -> None:
        self.clock = frame_clock(asyncio.get_running_loop())
        self.late = late
        self.tick = -1.0
        self.looks = 0

    def __call__(self) -> float:
        tick = self.clock.ticked[0]
        if tick != self.tick:
            self.tick, self.looks = tick, 0
        else:
            self.looks += 1
        return tick + self.late + self.looks


async def test_reading_past_read_first_is_left_for_after_the_senders_and_taken_in_turn(
    compiled: bool,
) -> None:
    """READ_FIRST into a tick the senders send; the sockets not read by then are read
    right after them at the same tick, nothing lost, and the next tick starts with them."""
    clock = frame_clock(asyncio.get_running_loop())
    # Two sockets are read before the senders (looks at 0 and 1, within 1.5), two after.
    reader = tickread.TickReader(clock, read_first=1.5, time=ReadingTime(), compiled=compiled)
    slows = [Slow() for _ in range(4)]
    endpoints = [await endpoint() for _ in slows]
    seen_by_sender: list[list[int]] = []
    sent = [0]

    def counts() -> list[int]:
        return [len(slow.packets) for slow in slows]

    def send(now: float) -> None:
        seen_by_sender.append(counts())

    def next_round(now: float) -> None:
        # Last at each tick (after the reader's own reads after the senders): once every
        # socket has had the round, the next round's datagrams, for the next tick.
        if min(counts()) == sent[0] < 3:
            sent[0] += 1
            for (_, address), slow in zip(endpoints, slows, strict=True):
                sender.sendto(slow.srtp(sent[0]), address)

    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for (protocol, _), slow in zip(endpoints, slows, strict=True):
            assert reader.register(protocol, slow.port)  # type: ignore[arg-type]
        clock.subscribe(send)
        clock.subscribe(next_round, last=True)
        await until(lambda: min(counts()) == 3)
        # The sender saw half of each round read: two sockets in turn, starting with
        # those the tick before left for after the senders.
        assert seen_by_sender[:4] == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 2, 2], [3, 3, 2, 2]]
        assert [slow.sequence_numbers() for slow in slows] == [[1, 2, 3]] * 4
        assert reader.deferred >= 6
    finally:
        clock.unsubscribe(send)
        clock.unsubscribe(next_round)
        sender.close()
        for protocol, _ in endpoints:
            reader.unregister(protocol)  # type: ignore[arg-type]
            protocol.transport.close()
    assert clock.subscribers == 0


async def test_a_tick_that_starts_late_sends_first_and_reads_everything_after(
    compiled: bool,
) -> None:
    """A tick that starts past READ_FIRST (the loop was busy) reads nothing before the
    senders; it reads every socket after them, a burst beyond the per-tick cap over
    the next ticks, in order."""
    clock = frame_clock(asyncio.get_running_loop())
    reader = tickread.TickReader(
        clock, read_first=0.5, time=ReadingTime(late=1.0), compiled=compiled
    )
    slow = Slow()
    protocol, address = await endpoint()
    seen_by_sender: list[int] = []
    seen_after: list[int] = []

    def send(now: float) -> None:
        seen_by_sender.append(len(slow.packets))

    def after(now: float) -> None:
        seen_after.append(len(slow.packets))

    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert reader.register(protocol, slow.port)  # type: ignore[arg-type]
        clock.subscribe(send)
        clock.subscribe(after, last=True)  # subscribed after the reader's own last one
        count = tickread.PER_TICK_LIMIT + 10
        seen_by_sender.clear()
        seen_after.clear()
        for seq in range(count):
            sender.sendto(slow.srtp(seq), address)
        await until(lambda: len(slow.packets) == count)
        assert slow.sequence_numbers() == list(range(count))
        # Every tick's sender ran before that tick's read: it saw only earlier ticks' reads.
        ticks = len(seen_after)
        assert seen_by_sender[:ticks] == [0, *seen_after[: ticks - 1]]
        assert tickread.PER_TICK_LIMIT in seen_after  # the cap, then the rest a tick later
    finally:
        clock.unsubscribe(send)
        clock.unsubscribe(after)
        sender.close()
        reader.unregister(protocol)  # type: ignore[arg-type]
        protocol.transport.close()


async def test_a_closed_socket_leaves_the_tick(compiled: bool) -> None:
    clock = frame_clock(asyncio.get_running_loop())
    reader = tickread.TickReader(clock, compiled=compiled)
    before = clock.subscribers
    protocol, _ = await endpoint()
    assert reader.register(protocol, Slow().port)  # type: ignore[arg-type]
    assert clock.subscribers == before + 2  # its reads before the senders, and after
    protocol.transport.close()
    await until(lambda: reader.sockets == 0)
    assert reader.sockets == 0 and clock.subscribers == before
    assert not reader.register(protocol, Slow().port)  # type: ignore[arg-type]


class Looks:
    """A clock on which each look takes a unit, from 0: the deadline d lets d + 1 reads go."""

    def __init__(self) -> None:
        self.looks = 0

    def __call__(self) -> float:
        self.looks += 1
        return float(self.looks - 1)


class Unreadable:
    """A socket whose fileno() raises: its read fails as a whole (not one datagram's)."""

    def fileno(self) -> int:
        raise RuntimeError("no descriptor")


def readable(protocols: list[Endpoint]) -> list[Any]:
    socks = [protocol.transport.get_extra_info("socket") for protocol in protocols]
    return select.select(socks, [], [], 0)[0]


async def read_turns(compiled: bool) -> list[Any]:
    """What one TickReader's turns read from the same five sockets with the same traffic
    (datagrams beyond the cap, STUN, an empty socket, a closing transport, a socket
    that cannot be read): the turns' counts, each port's packets and STUN in order,
    the sockets that left, the clock's looks, the datagrams read."""
    clock = frame_clock(asyncio.get_running_loop())
    looks = Looks()
    reader = tickread.TickReader(clock, time=looks, compiled=compiled)
    slows = [Slow() for _ in range(5)]
    endpoints = [await endpoint() for _ in slows]
    left: list[tuple[int, str | None]] = []
    protocols = [protocol for protocol, _ in endpoints]
    reader._failed = lambda protocol, exc: left.append(  # type: ignore[method-assign]
        (protocols.index(protocol), None if exc is None else str(exc))
    )
    entries: list[Any] = []
    for index, ((protocol, _), slow) in enumerate(zip(endpoints, slows, strict=True)):
        protocol.transport.pause_reading()  # type: ignore[attr-defined]
        sock = protocol.transport.get_extra_info("socket")._sock
        if index == 4:
            sock = Unreadable()
        entries.append((protocol, slow.port, sock, protocol.transport, protocol.error_received))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for index, (_, address) in enumerate(endpoints):
        for seq in range((tickread.PER_TICK_LIMIT + 5, 3, 0, 2, 1)[index]):
            sender.sendto(slows[index].srtp(seq), address)
        if index == 1:
            sender.sendto(STUN, address)
    await until(lambda: len(readable(protocols)) == 4)  # all but the empty one
    endpoints[3][0].transport.close()  # closing: it leaves at its turn, nothing read
    turns = [
        reader._read_turn(entries, 2, 2.0),  # three reads (looks 0, 1, 2), then past it
        reader._read_turn(entries, 1, math.inf),  # all, wrapping, no look
        reader._read_turn(entries, 0, 4.0),  # one read (look 4), then past it (look 5)
    ]
    sender.close()
    outcome = [
        turns,
        [slow.sequence_numbers() for slow in slows],
        [[data for data, _ in slow.other] for slow in slows],
        left,
        looks.looks,
        reader.datagrams,
    ]
    for protocol in protocols:
        protocol.transport.close()
    return outcome


async def test_the_compiled_turn_reads_as_the_python_one() -> None:
    """drain_each (C) against the Python step per socket, on the same sockets and
    traffic: the same counts, datagrams in the same order, the same sockets leaving the
    tick (a closing transport, a read that raised, with its error) and the same looks at
    the clock."""
    compiled, python = await read_turns(True), await read_turns(False)
    assert compiled == python
    turns, sequences, others, left, looks, datagrams = compiled
    assert turns == [3, 5, 1]
    limit = tickread.PER_TICK_LIMIT
    assert sequences == [list(range(limit + 5)), [0, 1, 2], [], [], []]
    assert others == [[], [STUN], [], [], []]
    assert left == [(3, None), (4, "no descriptor")] * 2
    assert looks == 4 + 0 + 2  # a turn that stopped looked once past its deadline
    assert datagrams == limit + 5 + 3 + 1


async def test_the_compiled_turn_reads_the_loops_own_clock() -> None:
    """Without a clock of its own, drain_each reads the monotonic clock asyncio's
    loop.time() reads: a deadline a second ago reads nothing, one in a minute reads all."""
    loop = asyncio.get_running_loop()
    reader = tickread.TickReader(frame_clock(loop), compiled=True)
    assert reader._c_time is None  # C's CLOCK_MONOTONIC, not a Python call per socket
    slow = Slow()
    protocol, address = await endpoint()
    protocol.transport.pause_reading()  # type: ignore[attr-defined]
    sock = protocol.transport.get_extra_info("socket")._sock
    entries = [(protocol, slow.port, sock, protocol.transport, protocol.error_received)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.sendto(slow.srtp(1), address)
    await until(lambda: readable([protocol]))
    try:
        assert reader._read_turn(entries, 0, loop.time() - 1) == 0
        assert reader._read_turn(entries, 0, loop.time() + 60) == 1
        assert slow.sequence_numbers() == [1]
    finally:
        sender.close()
        protocol.transport.close()


# --- a real call ------------------------------------------------------------------------------


@pytest.mark.usefixtures("loopback", "mode")
@pytest.mark.parametrize("read", ["tick", "arrival"])
async def test_a_real_call_hears_everything_keeps_consent_and_ends(
    monkeypatch: pytest.MonkeyPatch, read: tickread.ReadMode
) -> None:
    """A real aiortc caller: every frame arrives in order, ICE consent (STUN, checked
    every 50 ms, the call dropped after six misses) keeps the call up, and a DTLS
    close_notify reaches aiortc; in tick mode the sockets were read at the tick (asyncio
    not reading them) and are asyncio's again once the transport closes."""
    tickread.set_read_mode(read)
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.05)
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 0.1)
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    gateway = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        caller.addTransceiver("audio", direction="sendrecv")
        await caller.setLocalDescription(await caller.createOffer())
        await gateway.setRemoteDescription(caller.localDescription)
        receiver = gateway.getTransceivers()[0].receiver
        transport = CallTransport.adopt(receiver.transport)
        frames: list[NDArray[np.int16]] = []
        inbound = await answer_with_inbound(gateway, receiver, frames)
        connection = transport.transport._connection
        stun_requests: list[object] = []
        aioice_request_received = connection.request_received

        def request_received(*args: Any) -> None:
            stun_requests.append(args[0])
            aioice_request_received(*args)

        connection.request_received = request_received  # type: ignore[method-assign]
        await caller.setRemoteDescription(gateway.localDescription)
        await connected(caller)
        await connected(gateway)

        sockets = [p.transport for p in transport._fast_protocols]
        reader = tickread.tick_reader(asyncio.get_running_loop())
        if read == "tick":
            assert transport._tick_read is reader and sockets
            assert not any(s.is_reading() for s in sockets)  # type: ignore[attr-defined]
        else:
            assert transport._tick_read is None
            assert all(s.is_reading() for s in sockets)  # type: ignore[attr-defined]
        datagrams, kernel_times = reader.datagrams, reader._reader.kernel_times

        send = caller.getTransceivers()[0].sender.transport._send_rtp
        payloads = speech_packets(30)
        for i, payload in enumerate(payloads):
            p = RtpPacket(
                payload_type=inbound.opus_pt,
                sequence_number=100 + i,
                timestamp=960 * i,
                ssrc=0x1111,
                payload=payload,
            )
            await send(p.serialize())
            await asyncio.sleep(0.02 if i % 5 == 0 else 0)
        await until(lambda: len(frames) >= 30)
        decoder = OpusDecoder()
        assert len(frames) == 30
        for got, payload in zip(frames, payloads, strict=True):
            assert np.array_equal(got, decoder.decode(payload))
        if read == "tick":
            assert reader.datagrams - datagrams >= 30
            assert reader._reader.kernel_times - kernel_times >= 30
        else:
            assert reader.datagrams == datagrams

        # Consent: ~20 checks each way in a second; six misses in a row would end it.
        requests = len(stun_requests)
        await asyncio.sleep(1.0)
        assert len(stun_requests) - requests >= 5
        assert gateway.connectionState == caller.connectionState == "connected"

        # The caller's DTLS says close_notify: it reaches aiortc (in tick mode through the
        # tick's drain), the transport closes and gives its sockets back to asyncio (which
        # closes them with the connection; TickReader's own test sends one more through).
        await caller.getTransceivers()[0].sender.transport.stop()
        await until(lambda: transport.state == "closed")
        assert transport.state == "closed" and transport._tick_read is None
        assert all(s.is_reading() or s.is_closing() for s in sockets)  # type: ignore[attr-defined]
        assert not any(p in reader._sockets for p in transport.transport._connection._protocols)
    finally:
        await caller.close()
        await gateway.close()


# --- the setting ------------------------------------------------------------------------------


def test_the_setting_defaults_to_tick_and_is_read() -> None:
    assert load_settings(ENV).media_read == "tick"
    assert load_settings({**ENV, "GATEWAY_MEDIA_READ": "arrival"}).media_read == "arrival"
    env = {**ENV, "GATEWAY_MEDIA_READ": "arrival"}
    assert load_settings(env, media_read="tick").media_read == "tick"


@pytest.mark.parametrize("raw", ["poll", "TICK", " tick"])
def test_a_bad_mode_in_the_environment_is_refused(raw: str) -> None:
    with pytest.raises(
        ConfigError, match=f"GATEWAY_MEDIA_READ must be tick or arrival, got {raw!r}"
    ):
        load_settings({**ENV, "GATEWAY_MEDIA_READ": raw})


@pytest.mark.parametrize("command", ["serve", "cluster"])
def test_a_bad_mode_flag_is_refused(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, "--media-read", "poll"])
    assert exit_.value.code == 2
    assert "--media-read: must be tick or arrival, got 'poll'" in capsys.readouterr().err


@pytest.mark.usefixtures("mode")
async def test_the_gateway_reads_media_as_set(tmp_path: Path) -> None:
    for read in ("arrival", "tick"):
        env = {**ENV, "GATEWAY_MEDIA_READ": read, "GATEWAY_DATA_DIR": str(tmp_path / read)}
        gateway = Gateway(load_settings(env, port=0))
        try:
            assert tickread.read_mode() == read
        finally:
            await gateway.aclose()
    with pytest.raises(ValueError, match="media read mode"):
        tickread.set_read_mode("poll")  # type: ignore[arg-type]
