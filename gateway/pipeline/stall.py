"""Turns whose caller's frames stopped: each session's check, and one watch per loop.

The segmenter's hangover counts frames; when the caller's packets stop (a
network drop, a client that stops sending in silence) none come, and the turn
would stay open forever. A bot session's :class:`TurnStallCheck` closes it on the
wall clock instead, checking every :data:`STALL_CHECK_S` while a turn is open.

With a timer per session,
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
from .vad import VadSegmenter

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


class TurnStallCheck:
    """One session's check: calls ``close()`` once no frame came for the hangover mid-turn.

    No per-frame cost: the loop's :class:`StallWatch` runs :meth:`check` every
    :data:`STALL_CHECK_S` between :meth:`arm` (a turn opened) and :meth:`cancel`.
    """

    def __init__(self, segmenter: VadSegmenter) -> None:
        self._segmenter = segmenter
        # False while the session does not listen: the check then stops.
        self.listening = True
        # Held only while armed, so a session and its check are no cycle at rest.
        self._close: Callable[[], None] | None = None
        self._watch: StallWatch | None = None
        self.watched = False
        self._seen = 0
        self._since = 0.0
        self.tick_at = 0.0

    def arm(self, close: Callable[[], None]) -> None:
        """Start checking (a turn opened); ``close`` ends the turn if it stalls."""
        self._close = close
        loop = asyncio.get_running_loop()
        self._seen = self._segmenter.frames_seen
        self._since = self.tick_at = loop.time()
        self._watch = stall_watch(loop)
        self._watch.watch(self.check)
        self.watched = True

    def check(self, now: float) -> None:
        """Close the open turn once no frame came for the hangover (``now``: loop time)."""
        segmenter = self._segmenter
        if not segmenter.in_speech or not self.listening:
            self.cancel()
            return
        late = now - self.tick_at - STALL_CHECK_S
        self.tick_at = now
        if segmenter.frames_seen != self._seen:
            self._seen = segmenter.frames_seen
            self._since = now
        elif late > STALL_CHECK_S:
            # The event loop itself stalled: packets may be waiting to be read, so
            # that time says nothing about the caller.
            self._since += late
        elif now - self._since >= segmenter.config.hangover_ms / 1000:
            close = self._close
            self.cancel()
            if close is not None:
                close()

    def cancel(self) -> None:
        """Stop checking (nothing if not armed)."""
        self._close = None
        if self.watched:
            self.watched = False
            if self._watch is not None:
                self._watch.unwatch(self.check)
