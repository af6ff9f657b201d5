"""Calls' media sockets read at the frame clock's tick, not one loop wake-up per datagram.

On these VMs every sleep -> wake of a process costs it 90-250 us of CPU. Read
event-driven (``arrival`` mode), each inbound datagram of each call wakes the
event loop: 50 a second per call, at phases of their own. In ``tick`` mode (the
default; the timer-driven media model of FreeSWITCH and Asterisk) the loop's
:class:`~gateway.media.frameclock.FrameClock`, which wakes every 20 ms anyway
to send every call's frames, first drains every registered socket:
:class:`_rtp.Reader` reads each with ``recvmmsg`` (:data:`_rtp.READ_BATCH` at a
time, non-blocking, at most :data:`PER_TICK_LIMIT` per socket per tick: a
flooded socket cannot hold the tick, the rest is read at the next) and hands
each datagram to the socket's :class:`_rtp.Port` exactly as asyncio would, with
the arrival time the kernel stamped (``SO_TIMESTAMPNS``), so RTCP's jitter and
the arrival times the Python path sees stay right. Socket errors go to the
protocol's ``error_received``, as asyncio's ``_read_ready`` sends them.

The sockets are read before the calls' senders send (the bot hears a frame before
the frames of that tick go out), but for :data:`READ_FIRST` into the tick at most:
when the reading would hold the senders longer (a loaded core, many calls, or a
tick that started late behind set-up work), the sockets not read yet are read
right after the senders sent, in the same tick (:meth:`TickReader._read_rest`),
and the next tick's reading starts with them. So what callers hear stays on time
when the core is busy, each datagram is still read at its tick, and none is left
in the kernel for longer; only the bot hears those frames a tick's sends later.

The trade: a frame waits up to 20 ms (about 10 on average) more before the bot
hears it, for one wake-up per 20 ms for all calls. ``GATEWAY_MEDIA_READ=arrival``
(``serve --media-read arrival``) keeps the event-driven reading.

Only a call's compiled path on a direct UDP pair is read this way
(:meth:`~gateway.media.transport.CallTransport._take_datagrams` registers it
once DTLS is up); while registered, asyncio's reading of the socket is paused,
and :meth:`TickReader.unregister` resumes it. TURN relays, the pure-Python path
and everything before DTLS stay event-driven.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, Final, TypeAlias

from aioice.ice import StunProtocol

from gateway.config import MEDIA_READ_MODES
from gateway.config import MediaRead as ReadMode
from gateway.media.frameclock import TICK, FrameClock, frame_clock
from gateway.media.native import _rtp
from gateway.perloop import per_loop

logger = logging.getLogger(__name__)

PER_TICK_LIMIT: Final = 64
"""Datagrams read from one socket per tick: 1.28 s of a call's 50 packets a second, so a
loop stall's backlog is read at once, while a flooded socket costs a tick at most this."""

READ_FIRST: Final = TICK / 4
"""How long into a tick the sockets are read before the senders send (seconds after the
tick's time): beyond it, the sockets left are read after the senders, at the same tick.
At 80 calls on a quiet core the reading takes about 3 ms, so it all comes first."""

_mode: ReadMode = "tick"


def read_mode() -> ReadMode:
    """How calls' media sockets are read in this process (``tick`` unless set).

    ``arrival`` whatever is set if the compiled extension has no Reader (one built
    before it: ``make install`` rebuilds it), so a stale build still answers calls."""
    return _mode if hasattr(_rtp, "Reader") else "arrival"


def set_read_mode(mode: ReadMode) -> None:
    """Read calls registered from now on at the frame clock's tick or at each arrival."""
    global _mode
    if mode not in MEDIA_READ_MODES:
        raise ValueError(f"media read mode must be one of {MEDIA_READ_MODES}, got {mode!r}")
    _mode = mode


_Entry: TypeAlias = (
    "tuple[StunProtocol, _rtp.Port, Any, asyncio.DatagramTransport, Callable[[OSError], None]]"
)
"""A registered socket: its protocol, Port, socket, transport and ``error_received``."""


class TickReader:
    """The registered sockets of one event loop, drained at each of its frame clock's ticks.

    ``read_first`` (seconds, :data:`READ_FIRST`) bounds the reading before the senders;
    ``time`` is the clock it is read on (the loop's). ``compiled`` (default: whether the
    extension has it) reads a tick's sockets in one C call (``_rtp.Reader.drain_each``,
    ``gateway/media/csrc/tickread.c``) rather than one Python step per socket; both read
    the same sockets in the same order with the same deadline.
    """

    def __init__(
        self,
        clock: FrameClock,
        read_first: float = READ_FIRST,
        time: Callable[[], float] | None = None,
        *,
        compiled: bool | None = None,
    ) -> None:
        self._clock = clock
        self._read_first = read_first
        self._time = time or clock.loop.time
        self._reader = _rtp.Reader(self._handler_failed)
        if compiled is None:
            compiled = hasattr(self._reader, "drain_each")  # an older build has none
        self._drain_each = self._reader.drain_each if compiled else None
        # What drain_each reads the time with: None for C's own monotonic clock, when that
        # is the clock asked for (asyncio's loop.time() is time.monotonic()).
        self._c_time: Callable[[], float] | None = (
            None if time is None and _monotonic(clock.loop) else self._time
        )
        self._sockets: dict[StunProtocol, _Entry] = {}
        # The same entries, in registration order: what a tick reads, in turn.
        self._entries: list[_Entry] = []
        # Where the next tick's reading starts (the sockets read last at this one).
        self._start = 0
        # The sockets this tick left for after the senders.
        self._rest: list[_Entry] = []
        self.deferred = 0
        """Socket reads put off until after the senders, so far."""

    @property
    def sockets(self) -> int:
        """How many sockets are read at the tick."""
        return len(self._sockets)

    @property
    def compiled(self) -> bool:
        """Whether a tick's sockets are read by one C call."""
        return self._drain_each is not None

    @property
    def datagrams(self) -> int:
        """Datagrams read at ticks so far."""
        return self._reader.datagrams

    @property
    def waited(self) -> float:
        """Seconds those datagrams waited in their sockets for the tick, summed (from the
        kernel's arrival stamps): the delay this way of reading adds."""
        return self._reader.waited

    def register(self, protocol: StunProtocol, port: _rtp.Port) -> bool:
        """Read ``protocol``'s socket at each tick through ``port`` (asyncio's reading
        paused) until :meth:`unregister`; False (nothing done) if it cannot be."""
        transport = protocol.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or transport.is_closing() or protocol in self._sockets:
            return False
        sock = getattr(sock, "_sock", sock)  # asyncio's TransportSocket wraps it
        try:
            self._reader.timestamp_arrivals(sock, True)
        except (OSError, ValueError) as exc:
            logger.debug("media socket stays event-driven: %s", exc)
            return False
        transport.pause_reading()  # type: ignore[attr-defined]
        first = not self._sockets
        self._sockets[protocol] = (protocol, port, sock, transport, protocol.error_received)
        self._entries = list(self._sockets.values())  # a new list: a tick may be reading
        if first:
            self._clock.subscribe(self._tick, first=True)
            self._clock.subscribe(self._read_rest, last=True)
        return True

    def unregister(self, protocol: StunProtocol) -> None:
        """Stop reading ``protocol``'s socket at the tick; asyncio reads it again if open."""
        entry = self._sockets.pop(protocol, None)
        if entry is None:
            return
        _, _, sock, transport, _ = entry
        self._entries = list(self._sockets.values())
        if not self._sockets:
            self._clock.unsubscribe(self._tick)
            self._clock.unsubscribe(self._read_rest)
        if transport.is_closing():
            return
        transport.resume_reading()  # type: ignore[attr-defined]
        try:
            self._reader.timestamp_arrivals(sock, False)
        except (OSError, ValueError):
            pass  # closed meanwhile

    def _tick(self, now: float) -> None:
        """Read the sockets, from where the last tick left off, until READ_FIRST into the
        tick; leave the rest to :meth:`_read_rest`, after the senders."""
        entries = self._entries
        count = len(entries)
        if not count:
            return
        start = self._start % count
        read = self._read_turn(entries, start, self._clock.ticked[0] + self._read_first)
        if read < count:
            # The rest after the senders; the next tick starts with them.
            self._rest = [entries[(start + k) % count] for k in range(read, count)]
            self._start = start + read
            self.deferred += count - read

    def _read_rest(self, now: float) -> None:
        """Read what :meth:`_tick` left (after the senders sent)."""
        rest, self._rest = self._rest, []
        # Not those unregistered since.
        rest = [entry for entry in rest if self._sockets.get(entry[0]) is entry]
        if rest:
            self._read_turn(rest, 0, math.inf)

    def _read_turn(self, entries: list[_Entry], start: int, deadline: float) -> int:
        """Read ``entries`` in turn from ``start`` (wrapping) while the clock is not past
        ``deadline`` (never looked at if infinite); how many were read. A socket that is
        closing, closed or fails leaves the tick."""
        drain_each = self._drain_each
        if drain_each is not None:
            failed: list[tuple[StunProtocol, BaseException | None]] = []
            read: int = drain_each(entries, start, deadline, self._c_time, PER_TICK_LIMIT, failed)
            for protocol, exc in failed:
                self._failed(protocol, exc)
            return read
        count, time, timed = len(entries), self._time, deadline != math.inf
        for read in range(count):
            if timed and time() > deadline:
                return read
            protocol, port, sock, transport, error_received = entries[(start + read) % count]
            try:
                if transport.is_closing() or (
                    self._reader.drain(port, sock, error_received, PER_TICK_LIMIT) < 0
                ):
                    self._failed(protocol, None)
            except Exception as exc:
                self._failed(protocol, exc)
        return count

    def _failed(self, protocol: StunProtocol, exc: BaseException | None) -> None:
        """A socket that cannot be read at the tick (closing, closed, or its read raised:
        not one datagram's handler, which the Reader reports and goes on): asyncio reads it
        again if it can; the others' calls go on."""
        if exc is not None:
            logger.error("media socket read failed; it is read by asyncio again", exc_info=exc)
        self.unregister(protocol)

    @staticmethod
    def _handler_failed(exc: BaseException) -> None:
        # What asyncio does with an exception from datagram_received.
        logger.error("media datagram handling failed", exc_info=exc)


def _monotonic(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop.time()`` is asyncio's own (``time.monotonic()``)."""
    return getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time


_reader = per_loop(lambda loop: TickReader(frame_clock(loop)))


def tick_reader(loop: asyncio.AbstractEventLoop) -> TickReader:
    """The loop's tick reader (made on first use)."""
    return _reader(loop)
