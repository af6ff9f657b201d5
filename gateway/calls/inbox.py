"""The call manager's inbox: webhook events queued, then handled one at a time in arrival order.

Queuing never blocks (the webhook receiver must answer Meta at once). One worker
task takes the events in order; a journaled event is marked handled in the store
once handled, also after an error, so a successor process replays only what was
never handled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..events import Event
from ..logsafe import clip
from ..shutdown import stop_if_cancelled
from ..store import JournalEntry

__all__ = ["Inbox"]

# The calls' logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.calls")


class Inbox:
    """A queue of events and the one worker task that hands them to ``handle``."""

    def __init__(
        self,
        handle: Callable[[Event], Awaitable[None]],
        mark_handled: Callable[[JournalEntry], Awaitable[None]],
    ) -> None:
        self._handle = handle
        self._mark_handled = mark_handled
        self._queue: asyncio.Queue[JournalEntry | Event] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        """Whether the worker was started (and not yet stopped)."""
        return self._worker is not None

    def start(self) -> None:
        """Start the worker (events queued before are handled first)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="call-manager")

    def put(self, item: JournalEntry | Event) -> None:
        """Queue an event; never blocks."""
        self._queue.put_nowait(item)

    async def join(self) -> None:
        """Wait until every queued event was handled."""
        await self._queue.join()

    def cancel(self) -> None:
        """Cancel the worker; :meth:`stopped` waits for it."""
        if self._worker is not None:
            self._worker.cancel()

    async def stopped(self) -> None:
        """Wait for a cancelled worker to finish."""
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            entry, event = (item, item.event) if isinstance(item, JournalEntry) else (None, item)
            try:
                try:
                    await self._handle(event)
                except Exception:  # one bad event must not stop the others
                    log.exception("error handling %s", clip(event))
                if entry is not None:
                    # Also after an error: replaying it after a restart would fail again.
                    await self._mark_handled(entry)
            finally:
                self._queue.task_done()
            stop_if_cancelled()  # cancelled while handling, and a library swallowed it
