"""One object per event loop, made on first use: the frame clock, its readers and schedules.

Objects that hold timers, futures or connections belong to one event loop; a
process may run several (tests, the load tester beside a gateway). Each is kept
in a weak mapping, so it goes with its loop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_loop(
    make: Callable[[asyncio.AbstractEventLoop], T],
) -> Callable[[asyncio.AbstractEventLoop], T]:
    """A function giving each loop its own ``make(loop)``, made at its first call."""
    made: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get(loop: asyncio.AbstractEventLoop) -> T:
        obj = made.get(loop)
        if obj is None:
            obj = made[loop] = make(loop)
        return obj

    return get
