"""A store that keeps everything in this process's memory: nothing survives a restart.

For benchmarks and tests that measure something else, and as the plainest statement
of the :class:`~gateway.store.base.Store` contract (the contract tests run on it too).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import replace

from ..events import Event, PermissionReply
from ..records import CallRecord, CallState
from .base import JournalEntry, OutboxEvent
from .codec import dedupe_key


class MemoryStore:
    """:class:`~gateway.store.base.Store` on dicts (not durable)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._journal: dict[str, JournalEntry] = {}
        self._ids = itertools.count(1)
        self._calls: dict[str, CallRecord] = {}
        self._replies: dict[str, tuple[float, PermissionReply]] = {}
        self._outbox: dict[str, OutboxEvent] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def journal(self, events: Sequence[Event]) -> list[JournalEntry]:
        """Journal events with new dedupe keys."""
        now = time.time()
        entries = []
        for event in events:
            key = dedupe_key(event)
            if key in self._seen:
                continue
            self._seen[key] = now
            entry = JournalEntry(str(next(self._ids)), event, now)
            self._journal[entry.id] = entry
            entries.append(entry)
        return entries

    async def mark_handled(self, entry_id: str) -> None:
        """Drop the entry."""
        self._journal.pop(entry_id, None)

    async def unhandled(self) -> list[JournalEntry]:
        """Oldest first."""
        return sorted(self._journal.values(), key=lambda e: int(e.id))

    async def save_call(self, record: CallRecord) -> None:
        """Keep a copy (later changes to ``record`` need another save, as with SQLite)."""
        self._calls[record.call_id] = CallRecord.from_dict(record.as_dict())

    async def get_call(self, call_id: str) -> CallRecord | None:
        """A copy of the record, or None."""
        record = self._calls.get(call_id)
        return CallRecord.from_dict(record.as_dict()) if record else None

    async def recent_calls(self, limit: int) -> list[CallRecord]:
        """Newest first."""
        records = sorted(self._calls.values(), key=lambda r: r.created_at, reverse=True)
        return [CallRecord.from_dict(r.as_dict()) for r in records[: max(0, limit)]]

    async def live_calls(self) -> list[CallRecord]:
        """Records not ENDED."""
        records = sorted(self._calls.values(), key=lambda r: r.created_at)
        return [CallRecord.from_dict(r.as_dict()) for r in records if r.state != CallState.ENDED]

    async def save_permission_reply(self, reply: PermissionReply) -> None:
        """Latest per user."""
        self._replies[reply.from_] = (time.time(), reply)

    async def permission_reply(self, wa_id: str) -> PermissionReply | None:
        """The latest reply, or None."""
        kept = self._replies.get(wa_id)
        return kept[1] if kept else None

    async def outbox_add(self, event: OutboxEvent) -> None:
        """Keep the event (replacing one of the same id)."""
        self._outbox[event.id] = event

    async def outbox_due(self, now: float, limit: int) -> list[OutboxEvent]:
        """Due events, soonest first."""
        due = [e for e in self._outbox.values() if e.next_attempt_at <= now]
        return sorted(due, key=lambda e: (e.next_attempt_at, e.created_at))[: max(0, limit)]

    async def outbox_next_due(self) -> float | None:
        """The earliest next attempt."""
        return min((e.next_attempt_at for e in self._outbox.values()), default=None)

    async def outbox_retry(self, event_id: str, attempts: int, next_attempt_at: float) -> None:
        """Note the failed attempt."""
        event = self._outbox.get(event_id)
        if event is not None:
            self._outbox[event_id] = replace(
                event, attempts=attempts, next_attempt_at=next_attempt_at
            )

    async def outbox_remove(self, event_id: str) -> None:
        """Drop the event."""
        self._outbox.pop(event_id, None)

    async def prune(self, before: float) -> int:
        """Forget what is older than ``before``."""
        gone = [
            k
            for k, r in self._calls.items()
            if r.state == CallState.ENDED and (r.ended_at or r.created_at) < before
        ]
        seen = [k for k, t in self._seen.items() if t < before]
        journal = [k for k, e in self._journal.items() if e.received_at < before]
        replies = [k for k, (t, _) in self._replies.items() if t < before]
        for key in gone:
            del self._calls[key]
        for key in seen:
            del self._seen[key]
        for key in journal:
            del self._journal[key]
        for key in replies:
            del self._replies[key]
        return len(gone) + len(seen) + len(journal) + len(replies)
