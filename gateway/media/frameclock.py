"""One 20 ms timer for every outbound track of an event loop, not one per track per frame.

Each call's :class:`~gateway.media.playout.PlayoutTrack` waits for its next
frame every 20 ms. With ``asyncio.sleep`` that is one timer per call per frame:
a ``TimerHandle`` and a future made, pushed onto and popped off the loop's heap
(whose comparisons are Python code) 50 times a second per call, and the heap
grows with the calls. The tracks of a loop keep time on a shared grid instead
(a track's first frame goes out at once, as due on the latest grid line, so its
second follows in less than 20 ms, once per call), so all their frames fall due
on the same instants, and :class:`FrameClock` keeps one timer per instant that
wakes every track due then.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Final

from gateway.media.audio import FRAME_MS

TICK: Final = FRAME_MS / 1000


class FrameClock:
    """20 ms ticks of one event loop's clock, each with one timer for all its waiters."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._origin = loop.time()
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}

    def next_tick(self) -> float:
        """The loop time of the next tick (now, if now is one)."""
        ticks = math.ceil((self._loop.time() - self._origin) / TICK)
        return self._origin + ticks * TICK

    def last_tick(self) -> float:
        """The loop time of the latest tick (now, if now is one)."""
        ticks = math.floor((self._loop.time() - self._origin) / TICK)
        return self._origin + ticks * TICK

    async def sleep_until(self, when: float) -> None:
        """Sleep until ``when``, a tick's time (others are rounded to the nearest tick)."""
        tick = round((when - self._origin) / TICK)
        # Each waiter has its own future, so cancelling one wakes no other.
        waiter: asyncio.Future[None] = self._loop.create_future()
        waiters = self._waiters.get(tick)
        if waiters is None:
            waiters = self._waiters[tick] = []
            self._loop.call_at(self._origin + tick * TICK, self._fire, tick)
        waiters.append(waiter)
        await waiter

    def _fire(self, tick: int) -> None:
        for waiter in self._waiters.pop(tick, ()):
            if not waiter.done():
                waiter.set_result(None)


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FrameClock] = (
    weakref.WeakKeyDictionary()
)


def frame_clock(loop: asyncio.AbstractEventLoop) -> FrameClock:
    """The loop's frame clock (made on first use)."""
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = FrameClock(loop)
    return clock
