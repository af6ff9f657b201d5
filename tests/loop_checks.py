"""Proving work ran off the event loop: the loop must keep ticking while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator


class LoopTicker:
    """Counts event-loop turns; ``ticked`` is set (thread-safely) after a few."""

    def __init__(self) -> None:
        self.ticks = 0
        self.ticked = threading.Event()

    def wait_in_worker(self, what: str) -> None:
        """Called from the worker: blocks until the loop has run, or fails."""
        # Only a running event loop can set this: had the work blocked the loop,
        # this would wait for nothing and fail.
        if not self.ticked.wait(timeout=30):
            raise AssertionError(f"the event loop did not run during {what}")


@contextlib.asynccontextmanager
async def ticking_loop() -> AsyncIterator[LoopTicker]:
    """Run a task that counts loop turns for the duration of the block."""
    ticker = LoopTicker()
    done = False

    async def tick() -> None:
        while not done:
            ticker.ticks += 1
            if ticker.ticks == 5:
                ticker.ticked.set()
            await asyncio.sleep(0)

    task = asyncio.create_task(tick())
    try:
        yield ticker
    finally:
        done = True
        await task
