"""What the call manager keeps of its calls: their records in the store and in memory.

Writes go to the store without holding up a call (the store applies them in
order) and are awaited, never cancelled, on shutdown; a store that fails is
logged, never raised, so a call goes on (or ends) whatever the disk does. The
records of the most recent ended calls stay in memory for the API and the tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from ..errors import StoreError
from ..logsafe import clip
from ..records import CallRecord, CallState
from ..store import JournalEntry, Store

__all__ = ["CallLedger"]

# The calls' logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.calls")


class CallLedger:
    """The store behind the call manager, its writes in flight, and the recent history."""

    def __init__(self, store: Store, history_size: int) -> None:
        self.store = store
        self.history: OrderedDict[str, CallRecord] = OrderedDict()
        self.history_size = history_size
        # Record writes in flight: awaited (never cancelled) on shutdown.
        self._writes: set[asyncio.Task[None]] = set()

    async def flush(self) -> None:
        """Wait until every record write started so far is done."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def mark_handled(self, entry: JournalEntry) -> None:
        """Mark a journaled event handled; a failure is logged, never raised."""
        try:
            await self.store.mark_handled(entry.id)
        except Exception as exc:
            log.error("event %s handled but not marked so: %s", entry.id, clip(exc))

    async def save(self, record: CallRecord) -> None:
        """Save ``record`` and wait for it; a failure is logged, never raised."""
        # A store failure is logged, never raised: the call itself must go on (or end).
        try:
            await self.store.save_call(record)
        except Exception as exc:
            log.error("call %s: record not saved: %s", clip(record.call_id), clip(exc))

    def persist(self, record: CallRecord) -> None:
        """Save ``record`` without waiting (the store applies writes in order)."""
        task = asyncio.create_task(self.save(record), name=f"store:save:{record.call_id}")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def remember(self, record: CallRecord) -> None:
        """Keep ``record`` in the in-memory history, dropping the oldest past its size."""
        self.history[record.call_id] = record
        while len(self.history) > self.history_size:
            self.history.popitem(last=False)

    async def ended_record(self, call_id: str) -> CallRecord | None:
        """The record of a call that ended (here or in an earlier process), else None.

        A record that is not ENDED belongs to a call live in another process (a
        cluster's worker): only that process writes it.
        """
        record = self.history.get(call_id)
        if record is None:
            try:
                record = await self.store.get_call(call_id)
            except StoreError as exc:
                log.error("call %s: record not read: %s", clip(call_id), clip(exc))
        return record if record is not None and record.state is CallState.ENDED else None
