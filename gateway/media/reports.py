"""RTCP sender and receiver reports of every call, from one schedule per event loop.

aiortc runs two tasks per call for its reports, its sender's and its
receiver's ``_run_rtcp``, each waking every 0.5-1.5 s (``asyncio.sleep(0.5 +
random.random())``) to build packet objects and await two coroutine layers of
its transport and two of aioice's. Here each sender and receiver is a
:class:`Reporter` on the loop's :class:`ReportSchedule`, which rides the
:class:`~gateway.media.frameclock.FrameClock` (already ticking every 20 ms for
the calls' audio) and sends each report that is due at a tick, synchronously:
the bytes of :mod:`gateway.media.rtcp`, SRTCP-protected and sent by
:meth:`~gateway.media.transport.CallTransport.send_rtcp_now`.

Timing keeps aiortc's rule: a sender's or receiver's first report 0.5-1.5 s
after it starts, each next one 0.5-1.5 s (uniformly random, from ``random``
as aiortc draws it) after the previous one was sent; a report goes at the
first tick at or after its time, so up to one tick (20 ms) later than
aiortc's timer would have sent it. What is in the reports, and what the
sender and receiver record when they send one (the sender's ``lsr`` and its
time, the receiver's statistics' fraction-lost baseline), is aiortc's.

The sender and the receiver still have their ``_run_rtcp`` task, as aiortc's
``stop()`` expects, but it only waits: it puts its :class:`Reporter` on the
schedule, and when cancelled takes it off and (a sender) sends its BYE.
A report whose send finds the transport closed is skipped, as aiortc's
``ConnectionError`` is; a reporter that fails otherwise is logged and taken
off the schedule, and the other calls' reports go on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from typing import Any, Protocol

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.stats import RTCStatsReport

from gateway.media import rtcp
from gateway.media.adopt import adopt
from gateway.media.frameclock import frame_clock
from gateway.media.receiver import LazyDecoderReceiver
from gateway.perloop import per_loop

logger = logging.getLogger(__name__)


class RtcpRoute(Protocol):
    """Where a reporter sends (a :class:`~gateway.media.transport.CallTransport`)."""

    def send_rtcp_now(self, data: bytes) -> None: ...


class Reporter:
    """One sender's or receiver's periodic report."""

    def __init__(self, route: RtcpRoute) -> None:
        self.route = route
        self.scheduled = False
        self.turn = -1  # which of the schedule's entries is this reporter's live one

    def report(self) -> None:
        """Build and send the report now."""
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        try:
            self.route.send_rtcp_now(data)
        except ConnectionError:
            pass  # not (or no longer) connected: aiortc's _send_rtcp skips it too


class SenderReports(Reporter):
    """aiortc's sender's SR (+ SDES CNAME) from its counters; its BYE when it stops."""

    def __init__(self, sender: RTCRtpSender, route: RtcpRoute) -> None:
        super().__init__(route)
        self.sender: Any = sender
        self._sdes = rtcp.sdes_cname(sender._ssrc, sender._RTCRtpSender__cname)  # type: ignore[attr-defined]

    def report(self) -> None:
        sender = self.sender
        ntp = sender._RTCRtpSender__ntp_timestamp
        data = rtcp.sender_report(
            sender._ssrc,
            ntp,
            sender._RTCRtpSender__rtp_timestamp,
            sender._RTCRtpSender__packet_count,
            sender._RTCRtpSender__octet_count,
            self._sdes,
        )
        # What the peer's report blocks will echo: the round-trip time comes from it.
        sender._RTCRtpSender__lsr = (ntp >> 16) & 0xFFFFFFFF
        sender._RTCRtpSender__lsr_time = time.time()
        self.send(data)

    def bye(self) -> None:
        self.send(rtcp.bye(self.sender._ssrc))


class ReceiverReports(Reporter):
    """aiortc's receiver's RR, one block per SSRC received (none, no RR)."""

    def __init__(self, receiver: RTCRtpReceiver, route: RtcpRoute) -> None:
        super().__init__(route)
        self.receiver: Any = receiver

    def report(self) -> None:
        receiver = self.receiver
        lsrs: dict[int, int] = receiver._RTCRtpReceiver__lsr
        lsr_times: dict[int, float] = receiver._RTCRtpReceiver__lsr_time
        blocks = []
        # In aiortc's order: fraction_lost moves the statistics' interval baseline.
        for ssrc, stream in receiver._RTCRtpReceiver__remote_streams.items():
            lsr = dlsr = 0
            if ssrc in lsrs:
                lsr = lsrs[ssrc]
                delay = time.time() - lsr_times[ssrc]
                if 0 < delay < 65536:
                    dlsr = int(delay * 65536)
            values = getattr(stream, "report_values", None)  # NativeStreamStatistics': one C read
            if values is not None:
                fraction_lost, packets_lost, highest, jitter = values()
            else:
                fraction_lost, packets_lost = stream.fraction_lost, stream.packets_lost
                highest, jitter = stream.max_seq, stream.jitter
            blocks.append(
                rtcp.report_block(ssrc, fraction_lost, packets_lost, highest, jitter, lsr, dlsr)
            )
        ssrc = receiver._RTCRtpReceiver__rtcp_ssrc
        if ssrc is not None and blocks:
            self.send(rtcp.receiver_report(ssrc, blocks))


class ReportSchedule:
    """Every reporter of one event loop, each due 0.5-1.5 s after its last report."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[tuple[float, int, Reporter]] = []  # a heap of (when, turn, reporter)
        self._order = itertools.count()
        self._count = 0

    def add(self, reporter: Reporter) -> None:
        """Schedule ``reporter``'s first report (0.5-1.5 s from now)."""
        if reporter.scheduled:
            return
        reporter.scheduled = True
        self._count += 1
        self._push(reporter, self._loop.time())
        if self._count == 1:
            # After every call's frames: a report is never due to the ms.
            frame_clock(self._loop).subscribe(self._on_tick, last=True)

    def remove(self, reporter: Reporter) -> None:
        """No more reports from ``reporter`` (nothing if it is not scheduled)."""
        if not reporter.scheduled:
            return
        reporter.scheduled = False
        self._count -= 1
        # Its entry goes now (in place: _on_tick may be walking the heap), so an ended
        # call's sender and receiver are not kept for up to 1.5 s by the schedule.
        self._due[:] = [entry for entry in self._due if entry[2] is not reporter]
        heapq.heapify(self._due)
        if not self._count:
            frame_clock(self._loop).unsubscribe(self._on_tick)

    @property
    def reporters(self) -> int:
        """How many reporters are scheduled."""
        return self._count

    def _push(self, reporter: Reporter, now: float) -> None:
        # aiortc: asyncio.sleep(0.5 + random.random()) between reports.
        due = now + 0.5 + random.random()
        reporter.turn = turn = next(self._order)
        heapq.heappush(self._due, (due, turn, reporter))

    def _on_tick(self, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            _, turn, reporter = heapq.heappop(due)
            if not reporter.scheduled or reporter.turn != turn:
                continue  # taken off (and maybe put back) since
            try:
                reporter.report()
            except Exception:
                logger.exception("RTCP report failed; no more reports from %r", reporter)
                self.remove(reporter)
                continue
            self._push(reporter, now)


_schedule = per_loop(ReportSchedule)


def report_schedule(loop: asyncio.AbstractEventLoop) -> ReportSchedule:
    """The loop's report schedule (made on first use)."""
    return _schedule(loop)


async def run_reports(reporter: Reporter) -> None:
    """Keep ``reporter`` on the loop's schedule until this is cancelled."""
    loop = asyncio.get_running_loop()
    schedule = report_schedule(loop)
    schedule.add(reporter)
    try:
        await loop.create_future()  # never set: no wake-up until cancelled
    except asyncio.CancelledError:
        pass
    finally:
        schedule.remove(reporter)


async def run_sender_reports(sender: RTCRtpSender, route: RtcpRoute) -> None:
    """aiortc's ``RTCRtpSender._run_rtcp`` on the schedule: reports, then a BYE."""
    started: asyncio.Event = sender._RTCRtpSender__rtcp_started  # type: ignore[attr-defined]
    exited: asyncio.Event = sender._RTCRtpSender__rtcp_exited  # type: ignore[attr-defined]
    started.set()
    try:
        reporter = SenderReports(sender, route)
        await run_reports(reporter)
        reporter.bye()
    finally:
        exited.set()  # aiortc's stop() waits for it


class ReportingReceiver(LazyDecoderReceiver):
    """An :class:`~aiortc.RTCRtpReceiver` whose RTCP receiver reports go from the
    loop's :class:`ReportSchedule` when its transport has ``send_rtcp_now``
    (and whose decoder thread starts only if aiortc's path gets packets).

    Use :meth:`adopt` before the connection starts receiving.
    """

    @classmethod
    def adopt(cls, receiver: RTCRtpReceiver) -> ReportingReceiver:
        """Make aiortc's ``receiver`` a ReportingReceiver (the same object); returns it."""
        return adopt(receiver, cls, RTCRtpReceiver)

    # The remote-outbound stats of the peer's SRs: made when getStats asks (rtcp.py).
    rtcp_stats_on_demand = True

    async def getStats(self) -> RTCStatsReport:
        rtcp.add_stats(self, self._RTCRtpReceiver__stats)  # type: ignore[attr-defined]
        return await super().getStats()

    async def _run_rtcp(self) -> None:
        route = self.transport
        if not hasattr(route, "send_rtcp_now"):
            await super()._run_rtcp()
            return
        started: asyncio.Event = self._RTCRtpReceiver__rtcp_started  # type: ignore[attr-defined]
        exited: asyncio.Event = self._RTCRtpReceiver__rtcp_exited  # type: ignore[attr-defined]
        started.set()
        try:
            await run_reports(ReceiverReports(self, route))
        finally:
            exited.set()
