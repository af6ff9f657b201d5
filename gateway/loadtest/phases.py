"""When each simulated caller sends its 20 ms frames: on one shared clock, or at a phase of its own.

A phone sends a frame every 20 ms on a clock of its own, so the datagrams of a
gateway's calls arrive spread over the 20 ms, and a gateway that reads each at
its arrival wakes for each. The load generator's callers, left alone, all send
on its event loop's one frame clock (``shared``): one burst per tick, which one
wake-up of the gateway serves whole, a load that flatters reading at arrival
(``benchmarks/media_read.py``: 107 against 35 us of CPU per datagram once the
phases are spread). ``independent`` gives each caller a random phase, drawn
from the run's seed, so a run with the same seed gives the same callers the
same phases.

Cheap for the generator: phases are whole milliseconds (:data:`PHASES` of them
in 20 ms; asyncio's loop sleeps in whole milliseconds anyway, epoll's), and the
callers of one phase share one frame clock, one timer per tick: the generator
wakes at most 50 x :data:`PHASES` times a second however many calls it runs,
and phase 0 is the loop's own clock, which ticks for the callers' reads anyway.
"""

from __future__ import annotations

import asyncio
import random
from typing import Final, Literal, get_args

from ..media.frameclock import TICK, FrameClock, frame_clock

Phases = Literal["independent", "shared"]
PHASE_MODES: Final[tuple[Phases, ...]] = get_args(Phases)

PHASE_STEP: Final = 0.001
"""Phases are drawn in steps of this many seconds."""
PHASES: Final = round(TICK / PHASE_STEP)
"""Distinct phases in a 20 ms frame: at most this many timers tick in the generator."""


def draw_phases(calls: int, seed: int) -> list[int]:
    """Each caller's phase, in :data:`PHASE_STEP` after the shared grid, drawn from ``seed``.

    Its own generator, so the callers' other random draws (their pauses) are the
    same as in a ``shared`` run with the same seed.
    """
    rng = random.Random(f"phases {seed}")
    return [rng.randrange(PHASES) for _ in range(calls)]


class PhaseClocks:
    """The frame clocks of one loop's callers, one per phase in use, made on first use."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        shared = frame_clock(loop)
        self._grid = shared.last_tick()
        self._clocks: dict[int, FrameClock] = {0: shared}

    def clock(self, phase: int) -> FrameClock:
        """The clock that ticks ``phase`` steps after the loop's shared one (0: that one)."""
        if not 0 <= phase < PHASES:
            raise ValueError(f"phase must be in 0..{PHASES - 1}, got {phase}")
        clock = self._clocks.get(phase)
        if clock is None:
            origin = self._grid + phase * PHASE_STEP
            clock = self._clocks[phase] = FrameClock(self._loop, origin=origin)
        return clock
