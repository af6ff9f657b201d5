"""Event-loop lag: how late the loop wakes a timer, which is what every due audio frame waits."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from ..media.frameclock import TICK, FrameClock, frame_clock

AFTER_TICK = 1e-6
"""How long after its grid line the lag timer is set (see :class:`LoopLagMonitor`)."""


class LoopLagMonitor:
    """Measures how late the event loop wakes a timer (a 100 ms tick).

    Lag is what any 20 ms audio frame due at that moment was delayed by.
    ``on_sample`` (if given) gets each measured lag in seconds (the histogram).

    The tick is a plain timer callback, not a task sleeping in a loop: a task's
    sleep is a future and a timer, whose firing schedules the task's next step
    for one more pass of the loop; ten times a second, in every gateway, with or
    without calls. The lag read is the timer's own, before that extra pass.

    The timer is set on the frame clock's grid, on the grid line nearest
    ``interval`` on (every 5th tick while the loop keeps up): with calls up it
    wakes the loop together with the calls' audio, not ten more times a second;
    without calls the clock does not tick and the timer wakes the loop alone.
    When the clock's own tick for that instant ran first in the same pass, the
    lag is the tick's (when its timer ran), not later by the tick's work. The
    timer is set a microsecond after the grid line (:data:`AFTER_TICK`), so that
    it does run after the tick: timers due at one instant run in the heap's
    order, not the order they were set, and this one, set 100 ms ahead, mostly
    ran before the tick's (set 20 ms ahead), first after the wake-up, paying its
    cold caches with its few lines (``benchmarks/frame_costs.py``: 83 us a run
    in place before, 62 after). Both are still taken in the same pass: the loop
    wakes tens of microseconds or more after the tick's time.
    """

    def __init__(
        self,
        interval: float = 0.1,
        window: int = 600,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        self.interval = interval
        self.lags: deque[float] = deque(maxlen=window)
        self.on_sample = on_sample
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: FrameClock | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    @property
    def running(self) -> bool:
        """Whether a tick is scheduled."""
        return self._timer is not None

    def start(self) -> None:
        """Begin measuring on the running loop (:meth:`stop` ends it)."""
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._clock = frame_clock(self._loop)
            self._schedule(self._loop.time())

    async def stop(self) -> None:
        """Stop measuring."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None and self._clock is not None
        # The nearest grid line to now + interval (a shorter interval than half a tick
        # is the next tick).
        self._due = self._clock.on_grid(now + max(self.interval - TICK / 2, 0.0))
        self._timer = self._loop.call_at(self._due + AFTER_TICK, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None and self._clock is not None
        now = self._loop.time()
        tick, ran = self._clock.ticked
        if tick == self._due:
            lag = ran - self._due  # the loop woke for both; the tick's work since is not lag
        else:  # no tick at this instant (no calls): this timer woke the loop
            lag = now - (self._due + AFTER_TICK)
        lag = max(0.0, lag)
        # The next tick first: a failing on_sample must not stop the measuring.
        self._schedule(now)
        self.lags.append(lag)
        if self.on_sample is not None:
            self.on_sample(lag)

    def quantile(self, q: float) -> float:
        """Lag quantile over the window, in seconds (0 before any sample)."""
        return quantile(self.lags, q)


def quantile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile, interpolated linearly between the closest ranks (numpy's
    default method); 0 for no values.

    Plain Python on purpose: ``numpy.quantile`` imports ``numpy.ma`` (about 1 MiB
    resident) at the first scrape, for a sort of at most a few hundred floats.
    """
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = min(max(q, 0.0), 1.0) * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)
