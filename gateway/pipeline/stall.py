"""One watch for every call's open turn on an event loop, riding on its frame clock.

A bot session checks every :data:`STALL_CHECK_S` whether the caller's frames
stopped mid-turn (see ``BotSession._check_stall``). With a timer per session,
every call with an open turn arms a ``TimerHandle`` ten times a second, each
pushed onto and popped off the loop's heap (whose comparisons are Python code),
and, the sessions' timers falling due at instants of their own, each may wake
the loop once more. :class:`StallWatch` runs all the loop's checks from one
callback on the loop's :class:`~gateway.media.frameclock.FrameClock` instead:
no timer of its own, and no wake-up that the 20 ms tick sending every call's
audio does not already make.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from ..media.frameclock import TICK, FrameClock, frame_clock
from ..perloop import per_loop

log = logging.getLogger(__name__)

STALL_CHECK_S: Final = 0.1
"""How often each watched check runs (on the frame clock's grid: every 5th tick)."""

StallCheck = Callable[[float], None]
"""Called with the loop time, every :data:`STALL_CHECK_S` while watched."""


class StallWatch:
    """Calls each watched check every :data:`STALL_CHECK_S`, from one frame clock callback."""

    def __init__(self, clock: FrameClock) -> None:
        self._clock = clock
        # Insertion-ordered, so checks run in the order they were watched.
        self._checks: dict[StallCheck, None] = {}
        self._due = 0.0

    def watch(self, check: StallCheck) -> None:
        """Run ``check(now)`` every :data:`STALL_CHECK_S` from now on (first within that)."""
        self._checks[check] = None
        if len(self._checks) == 1:
            # subscribe() calls _on_tick at once: the first round of checks comes a period on.
            self._due = float("inf")
            self._clock.subscribe(self._on_tick)
            self._due = self._clock.last_tick() + STALL_CHECK_S - TICK / 2

    def unwatch(self, check: StallCheck) -> None:
        """Stop running ``check`` (nothing if it is not watched)."""
        if check in self._checks:
            del self._checks[check]
            if not self._checks:
                self._clock.unsubscribe(self._on_tick)

    @property
    def watched(self) -> int:
        """How many checks are watched."""
        return len(self._checks)

    def _on_tick(self, now: float) -> None:
        if now < self._due:
            return
        # On the grid, half a tick early: the 5th tick from this one is due, however
        # late this one ran and whatever the float rounding.
        self._due = self._clock.last_tick() + STALL_CHECK_S - TICK / 2
        for check in list(self._checks):
            if check in self._checks:  # not unwatched by an earlier one
                try:
                    check(now)
                except Exception:
                    # One call's failure must not stop the other calls' checks.
                    log.exception("stall check %r failed; unwatched", check)
                    self.unwatch(check)


_watch = per_loop(lambda loop: StallWatch(frame_clock(loop)))


def stall_watch(loop: asyncio.AbstractEventLoop) -> StallWatch:
    """The loop's stall watch (made on first use)."""
    return _watch(loop)
