"""One 20 ms timer for every outbound track of an event loop, not one per track per frame.

Each call's :class:`~gateway.media.playout.PlayoutTrack` sends a frame every
20 ms. With ``asyncio.sleep`` that is one timer per call per frame: a
``TimerHandle`` and a future made, pushed onto and popped off the loop's heap
(whose comparisons are Python code) 50 times a second per call, and the heap
grows with the calls. The tracks of a loop keep time on a shared grid instead
(a track's first frame goes out at once, as due on the latest grid line, so its
second follows in less than 20 ms, once per call), so all their frames fall due
on the same instants, and :class:`FrameClock` ticks once per instant for all.

Two ways to wait for a tick:

- :meth:`FrameClock.subscribe`: a plain function called at every tick, for as
  long as it stays subscribed. This is how calls send
  (:class:`~gateway.media.sender.PlayoutSender`): one timer callback per tick
  walks every call's sender, with no task woken and no future made per call.
- :meth:`FrameClock.sleep_until`: a coroutine for one tick (aiortc's generic
  ``recv()`` path), one future per waiter.

Every sleep and wake-up of the event loop costs the process CPU of its own
(on a VM, 0.1-0.25 ms: see docs/performance.md), while timers due at the same
instant run in one pass of the loop. So the gateway's other periodic timers
(the loop-lag monitor, the calls' media watch, the heap trimmer) are set on the
clock's grid (:func:`call_on_grid`, :func:`sleep_on_grid`): with calls up they
ride the tick's wake-up instead of adding their own, and without calls they
cost what they did. The grid is there whether the clock ticks or not.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, Final

from gateway.media.audio import FRAME_MS
from gateway.perloop import per_loop

logger = logging.getLogger(__name__)

TICK: Final = FRAME_MS / 1000

TickCallback = Callable[[float], None]
"""Called with the loop time at each tick; see :meth:`FrameClock.subscribe`."""


class FrameClock:
    """20 ms ticks of one event loop's clock, each with one timer for all its waiters.

    ``origin`` is a loop time on the clock's grid (default: now). A loop's calls
    share :func:`frame_clock`; a clock of another origin ticks at another phase
    (the load tester's callers, which send at phases of their own as phones do:
    :mod:`gateway.loadtest.phases`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: float | None = None) -> None:
        self._loop = loop
        self._origin = loop.time() if origin is None else origin
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        # The timer of each tick with waiters (cancelled with the tick's last waiter).
        self._timers: dict[int, asyncio.TimerHandle] = {}
        # Insertion-ordered, so subscribers are served in the order they came: those
        # subscribed with first=True, then the others, then those with last=True.
        self._first: dict[TickCallback, None] = {}
        self._subscribers: dict[TickCallback, None] = {}
        self._last: dict[TickCallback, None] = {}
        self._groups = (self._first, self._subscribers, self._last)
        self._ticker: asyncio.TimerHandle | None = None
        self._ticker_tick = 0
        self.ticked = (-math.inf, -math.inf)
        """The latest tick's time, and the loop time its timer ran (so another timer
        due at that tick can tell how late the loop woke, before the tick's work)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop whose clock this is."""
        return self._loop

    def next_tick(self) -> float:
        """The loop time of the next tick (now, if now is one)."""
        return self.on_grid(self._loop.time())

    def on_grid(self, when: float) -> float:
        """The loop time of the first tick at or after ``when``.

        The same float the clock's own timer for that tick has, so a timer set
        there runs in the same pass of the loop as the tick (one wake-up for both).
        """
        # A hair of slack, so that a grid time plus a whole number of ticks (0.1 s)
        # is that tick, not the next, whatever the float rounding.
        ticks = math.ceil((when - self._origin) / TICK - 1e-9)
        return self._origin + ticks * TICK

    def last_tick(self, now: float | None = None) -> float:
        """The loop time of the latest tick at or before ``now`` (default: the loop's time)."""
        if now is None:
            now = self._loop.time()
        # The same hair of slack as on_grid's: a grid time is its own tick.
        ticks = math.floor((now - self._origin) / TICK + 1e-9)
        return self._origin + ticks * TICK

    async def sleep_until(self, when: float) -> None:
        """Sleep until ``when``, a tick's time (others are rounded to the nearest tick).

        The tick's timer goes when its last sleep is cancelled: a call that ended
        leaves no wake-up behind."""
        tick = round((when - self._origin) / TICK)
        # Each waiter has its own future, so cancelling one wakes no other.
        waiter: asyncio.Future[None] = self._loop.create_future()
        waiters = self._waiters.get(tick)
        if waiters is None:
            waiters = self._waiters[tick] = []
            self._timers[tick] = self._loop.call_at(self._origin + tick * TICK, self._fire, tick)
        waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            self._forget(tick, waiter)
            raise

    def subscribe(self, callback: TickCallback, *, first: bool = False, last: bool = False) -> None:
        """Call ``callback(now)`` at every tick from now on, and once right away;
        with ``first``, before the callbacks already subscribed (the media sockets'
        reader, :mod:`gateway.media.tickread`: the bot hears before the senders send);
        with ``last``, after every callback without it (the reader again: what it
        left for after the senders, :data:`~gateway.media.tickread.READ_FIRST`).

        ``now`` is the loop time when the tick's timer ran (at or a little after
        the tick; later if the loop stalled, and ticks missed in a stall are not
        replayed: the callback sees the time and catches up itself). A callback
        that raises is unsubscribed and logged; the others go on.
        """
        (self._first if first else self._last if last else self._subscribers)[callback] = None
        if self._ticker is None:
            self._schedule(self._tick_after(self._loop.time()))
        self._call(callback, self._loop.time())

    def unsubscribe(self, callback: TickCallback) -> None:
        """Stop calling ``callback`` (nothing if it is not subscribed)."""
        for subscribers in self._groups:
            subscribers.pop(callback, None)
        if self._ticker is not None and not self.subscribers:
            self._ticker.cancel()
            self._ticker = None

    @property
    def subscribers(self) -> int:
        """How many callbacks tick."""
        return sum(map(len, self._groups))

    def _tick_after(self, now: float) -> int:
        return math.floor((now - self._origin) / TICK) + 1

    def _schedule(self, tick: int) -> None:
        self._ticker_tick = tick
        self._ticker = self._loop.call_at(self._origin + tick * TICK, self._on_tick)

    def _on_tick(self) -> None:
        now = self._loop.time()
        self.ticked = (self._origin + self._ticker_tick * TICK, now)
        # The next tick before the callbacks run, so one that unsubscribes the
        # last callback cancels it.
        self._schedule(max(self._ticker_tick + 1, self._tick_after(now)))
        for subscribers in self._groups:
            for callback in list(subscribers):
                if callback in subscribers:  # not unsubscribed by an earlier one
                    # _call's body, inline: this runs for every call every 20 ms.
                    try:
                        callback(now)
                    except Exception:
                        logger.exception("frame clock callback %r failed; unsubscribed", callback)
                        self.unsubscribe(callback)

    def _call(self, callback: TickCallback, now: float) -> None:
        # As in _on_tick, which has it inline.
        try:
            callback(now)
        except Exception:
            # One call's failure must not stop the others' audio.
            logger.exception("frame clock callback %r failed; unsubscribed", callback)
            self.unsubscribe(callback)

    def _forget(self, tick: int, waiter: asyncio.Future[None]) -> None:
        # A cancelled sleep (an ended call's media watch, say): the last waiter of a
        # tick takes its timer along, so the loop does not wake up for no one.
        waiters = self._waiters.get(tick)
        if waiters is None:
            return  # the tick came already
        try:
            waiters.remove(waiter)
        except ValueError:
            return  # a later sleep for the same tick: not this waiter's
        if not waiters:
            del self._waiters[tick]
            self._timers.pop(tick).cancel()

    def _fire(self, tick: int) -> None:
        self._timers.pop(tick, None)
        for waiter in self._waiters.pop(tick, ()):
            if not waiter.done():
                waiter.set_result(None)


_clock = per_loop(FrameClock)


def frame_clock(loop: asyncio.AbstractEventLoop) -> FrameClock:
    """The loop's frame clock (made on first use)."""
    return _clock(loop)


def call_on_grid(
    loop: asyncio.AbstractEventLoop, when: float, callback: Callable[..., object], *args: Any
) -> asyncio.TimerHandle:
    """``loop.call_at(when, callback, *args)``, moved on to the frame clock's next grid
    line (up to a tick later): the timer shares the tick's wake-up."""
    return loop.call_at(frame_clock(loop).on_grid(when), callback, *args)


async def sleep_on_grid(delay: float) -> None:
    """``asyncio.sleep(delay)``, ending on the frame clock's grid (up to a tick later):
    the task's wake-up is the tick's."""
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    await clock.sleep_until(clock.on_grid(loop.time() + delay))
