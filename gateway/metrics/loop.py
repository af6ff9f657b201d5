"""Event-loop lag: how late the loop wakes a timer, which is what every due audio frame waits."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable


class LoopLagMonitor:
    """Measures how late the event loop wakes a timer (a 100 ms tick).

    Lag is what any 20 ms audio frame due at that moment was delayed by.
    ``on_sample`` (if given) gets each measured lag in seconds (the histogram).
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
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin measuring (owned here; :meth:`stop` cancels it)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - due)
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
