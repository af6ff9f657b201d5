"""Reading calls' media sockets at the frame clock's tick vs at each arrival: CPU per datagram.

The echo load test's simulated callers all send on one frame clock, so their
packets reach the gateway in one burst per 20 ms and one loop wake-up serves them
all; real callers send at phases of their own, and each datagram read at its
arrival wakes the loop by itself. This puts the receive side alone under that
load: ``--calls`` UDP sockets, each with the compiled path a call has
(``_rtp.Port`` on an ``_rtp.Inbound``: SRTP unprotect, RTP parse, the packet
handed to a Python callback), fed 50 SRTP packets a second each by another
process, each socket at its own phase of the 20 ms; a frame clock subscriber
stands for the senders (the loop wakes every 20 ms in both modes). ``arrival``:
asyncio's datagram transports call the Port; ``tick``: :mod:`gateway.media.tickread`
drains them at each tick. Rounds alternate the modes; the figure is this
process's CPU time per datagram read, and its wake-ups (voluntary context
switches) a second; for tick, how long a datagram waited in its socket for the
tick (mean, from the kernel's arrival stamps): the delay the mode adds.

    python benchmarks/media_read.py [--calls 10] [--duration 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import resource
import socket
import statistics
import sys
import time
from collections.abc import Sequence

import pylibsrtp
from aiortc.rtp import RtpPacket

from gateway.media import native, tickread
from gateway.media.frameclock import frame_clock

KEY = bytes(range(30))
_rtp = native._rtp


def send(ports: list[int], duration: float) -> None:
    """The callers: 50 packets a second to each port, port i at phase i/len(ports) of 20 ms."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sessions = {
        port: pylibsrtp.Session(
            pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        )
        for port in ports
    }
    start = time.monotonic()
    due = [(start + i * 0.02 / len(ports), port, 0) for i, port in enumerate(ports)]
    heapq.heapify(due)
    while True:
        when, port, seq = heapq.heappop(due)
        if when - start > duration:
            return
        wait = when - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        packet = RtpPacket(
            payload_type=111, sequence_number=seq & 0xFFFF, timestamp=960 * seq, ssrc=port
        )
        packet.payload = bytes(80)
        sock.sendto(sessions[port].protect(packet.serialize()), ("127.0.0.1", port))
        heapq.heappush(due, (when + 0.02, port, seq + 1))


class Endpoint(asyncio.DatagramProtocol):
    """An ICE socket's protocol (its ``datagram_received`` shadowed, as aioice's is)."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]


class Sink:
    """What the compiled path hands a packet to (the same in both modes)."""

    def __init__(self) -> None:
        self.packets = 0

    def slow(self, data: bytes, arrival_time_ms: int) -> None:
        self.packets += 1


async def measure(
    mode: tickread.ReadMode, calls: int, duration: float
) -> tuple[float, float, float]:
    """(us of CPU per datagram, wake-ups a second, mean ms a datagram waited for the
    tick) of one run."""
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    reader = tickread.TickReader(clock)
    sink = Sink()

    def senders(now: float) -> None:  # the calls' senders' tick, in both modes
        pass

    clock.subscribe(senders)
    transports = []
    for _ in range(calls):
        rx = pylibsrtp.Session(
            pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        )
        inbound = _rtp.Inbound(
            native.srtp_function("srtp_unprotect"),
            native.srtp_session(rx),
            rx,
            sink.slow,
            print,
        )
        transport, protocol = await loop.create_datagram_endpoint(
            Endpoint, local_addr=("127.0.0.1", 0)
        )
        port = _rtp.Port(inbound, lambda data, addr: None)
        protocol.datagram_received = port  # type: ignore[method-assign]  # as CallTransport's
        if mode == "tick":
            reader.register(protocol, port)  # type: ignore[arg-type]
        transports.append(transport)
    ports = [t.get_extra_info("sockname")[1] for t in transports]
    sender = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--send", ",".join(map(str, ports)), str(duration + 2)
    )
    try:
        await asyncio.sleep(1)
        cpu, packets = time.process_time(), sink.packets
        waited, read = reader.waited, reader.datagrams
        wakes = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        await asyncio.sleep(duration)
        cpu = time.process_time() - cpu
        packets = sink.packets - packets
        wakes = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - wakes
        waited, read = reader.waited - waited, reader.datagrams - read
    finally:
        await sender.wait()
        for protocol_transport in transports:
            protocol_transport.close()
        clock.unsubscribe(senders)
        await asyncio.sleep(0.1)
    return cpu * 1e6 / max(packets, 1), wakes / duration, waited * 1000 / max(read, 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"receive side of {args.calls} calls, 50 SRTP packets/s each at its own phase, "
        f"{args.duration:g} s a run; process CPU per datagram and wake-ups a second"
    )
    print(
        "round | arrival us/dgram wake/s | tick us/dgram wake/s waited ms | tick/arrival us, wake/s"
    )
    rows: list[tuple[float, ...]] = []
    for r in range(args.rounds):
        arrival = await measure("arrival", args.calls, args.duration)
        tick = await measure("tick", args.calls, args.duration)
        rows.append((*arrival[:2], *tick))
        print(row(f"{r + 1:>5}", rows[-1]), flush=True)
    print(row("  med", [statistics.median(column) for column in zip(*rows, strict=True)]))


def row(label: str, r: Sequence[float]) -> str:
    """(arrival us, arrival wake/s, tick us, tick wake/s, tick's mean wait ms) as a row."""
    return (
        f"{label} | {r[0]:>9.1f} {r[1]:>12.0f} | {r[2]:>9.1f} {r[3]:>10.0f} {r[4]:>9.1f} | "
        f"{r[2] / r[0]:.3f}, {r[3] / r[1]:.3f}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--send"]:
        send([int(p) for p in sys.argv[2].split(",")], float(sys.argv[3]))
    else:
        asyncio.run(main())
