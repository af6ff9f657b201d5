"""Giving the heap that ended calls freed back to the operating system.

glibc's malloc returns freed memory to the kernel only from the top of the
heap; what a call freed in the middle (its DTLS, SRTP, codec and Python
buffers) stays resident until reused. ``malloc_trim(0)`` releases those free
pages. It runs in a worker thread (it walks the heap: about a millisecond per
few MiB), after calls end and at most once every :data:`MIN_INTERVAL`
seconds, so it costs nothing per packet and little per call; its timer is on the
frame clock's grid, so with other calls still up it shares their audio's
wake-up. Elsewhere than glibc it is a no-op.

:func:`map_large_allocations` gives each allocation of
:data:`MMAP_THRESHOLD` bytes or more a mapping of its own (glibc's
``M_MMAP_THRESHOLD``), given back to the kernel when freed. A call's big
buffers come and go at uneven times (the caller's turn as it grows, the
utterance handed to the bot and played back): in the heap, each leaves a hole
that the next call's smaller objects split, and the heap keeps the high-water
mark of them all. glibc's own threshold starts at 128 KiB and rises to
the largest block freed, so without it those buffers all land in the heap.

:func:`freeze_startup_objects` keeps what start-up built (modules, classes, the
app) out of the cyclic garbage collector's passes, which otherwise walk it again
at every older-generation collection while calls run.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .media.frameclock import call_on_grid

if TYPE_CHECKING:
    from .call import Call

log = logging.getLogger(__name__)

# A trim waits this long after a call ends (so that a burst of ends is one trim)...
DELAY = 0.2
# ...and comes at most this often.
MIN_INTERVAL = 2.0

# Allocations this large or larger get a mapping of their own (see the module's doc):
# a second of a caller's speech is 32 KB; nothing per packet comes near it.
MMAP_THRESHOLD = 32 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>


def _glibc(name: str) -> Callable[..., int] | None:
    """glibc's malloc function ``name`` in this process, or None elsewhere (musl, macOS)."""
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)
        return function
    except (OSError, AttributeError):
        return None


def map_large_allocations(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc's malloc map each block of ``threshold`` bytes or more on its own.

    For a serving process, once, at start-up (see the module's doc). An operator's
    ``MALLOC_MMAP_THRESHOLD_`` in the environment is left as it is. Returns whether
    the threshold is now ``threshold`` (False elsewhere than glibc, or when left).
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = _glibc("mallopt")
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def freeze_startup_objects() -> None:
    """Move every object alive now to the collector's permanent generation.

    For a serving process, once, after start-up: those objects live as long as the
    process, and walking them (about 30 ms of CPU per full collection with calls
    up) finds nothing. A collection first, so start-up's own garbage is freed, not
    kept. Frozen objects are still freed when their reference count drops to zero.
    """
    gc.collect()
    gc.freeze()


class HeapTrimmer:
    """A call observer: trims the heap once calls have ended (see the module's doc)."""

    def __init__(self) -> None:
        self._trim = _glibc("malloc_trim")
        self._pending: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[int] | None = None
        self._last = float("-inf")
        self.trims = 0

    @property
    def available(self) -> bool:
        """Whether this C library can trim (glibc)."""
        return self._trim is not None

    def call_started(self, call: Call) -> None:
        pass

    def call_answered(self, call: Call) -> None:
        pass

    def call_refused(self, call_id: str, reason: str) -> None:
        pass

    def call_ended(self, call: Call) -> None:
        if self._trim is None or self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(DELAY, self._last + MIN_INTERVAL - loop.time())
        self._pending = call_on_grid(loop, loop.time() + delay, self._start)

    def _start(self) -> None:
        self._pending = None
        if self._trim is None or self._running is not None:
            return
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._running = loop.run_in_executor(None, self._trim, 0)
        self._running.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[int]) -> None:
        self._running = None
        if future.cancelled():
            return
        if future.exception() is not None:
            log.warning("malloc_trim failed: %r", future.exception())
            return
        self.trims += 1

    async def aclose(self) -> None:
        """Cancel a pending trim and wait for one in progress."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)
