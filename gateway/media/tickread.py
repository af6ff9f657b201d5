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
from typing import Any, Final, TypeAlias

from aioice.ice import StunProtocol

from gateway.config import MEDIA_READ_MODES
from gateway.config import MediaRead as ReadMode
from gateway.media.frameclock import FrameClock, frame_clock
from gateway.media.native import _rtp
from gateway.perloop import per_loop

logger = logging.getLogger(__name__)

PER_TICK_LIMIT: Final = 64
"""Datagrams read from one socket per tick: 1.28 s of a call's 50 packets a second, so a
loop stall's backlog is read at once, while a flooded socket costs a tick at most this."""

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


_Entry: TypeAlias = "tuple[_rtp.Port, Any, asyncio.DatagramTransport]"


class TickReader:
    """The registered sockets of one event loop, drained at each of its frame clock's ticks."""

    def __init__(self, clock: FrameClock) -> None:
        self._clock = clock
        self._reader = _rtp.Reader(self._handler_failed)
        self._sockets: dict[StunProtocol, _Entry] = {}

    @property
    def sockets(self) -> int:
        """How many sockets are read at the tick."""
        return len(self._sockets)

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
        self._sockets[protocol] = (port, sock, transport)
        if first:
            self._clock.subscribe(self._tick, first=True)
        return True

    def unregister(self, protocol: StunProtocol) -> None:
        """Stop reading ``protocol``'s socket at the tick; asyncio reads it again if open."""
        entry = self._sockets.pop(protocol, None)
        if entry is None:
            return
        _, sock, transport = entry
        if not self._sockets:
            self._clock.unsubscribe(self._tick)
        if transport.is_closing():
            return
        transport.resume_reading()  # type: ignore[attr-defined]
        try:
            self._reader.timestamp_arrivals(sock, False)
        except (OSError, ValueError):
            pass  # closed meanwhile

    def _tick(self, now: float) -> None:
        drain = self._reader.drain
        for protocol, (port, sock, transport) in tuple(self._sockets.items()):
            try:
                if transport.is_closing() or (
                    drain(port, sock, protocol.error_received, PER_TICK_LIMIT) < 0
                ):
                    self.unregister(protocol)
            except Exception:
                # Not one datagram's handler (the Reader reports those and goes on):
                # this socket cannot be read; the others' calls go on.
                logger.exception("media socket read failed; it is read by asyncio again")
                self.unregister(protocol)

    @staticmethod
    def _handler_failed(exc: BaseException) -> None:
        # What asyncio does with an exception from datagram_received.
        logger.error("media datagram handling failed", exc_info=exc)


_reader = per_loop(lambda loop: TickReader(frame_clock(loop)))


def tick_reader(loop: asyncio.AbstractEventLoop) -> TickReader:
    """The loop's tick reader (made on first use)."""
    return _reader(loop)
