"""The one interface to everything the gateway keeps across restarts.

The gateway needs six kinds of durable state: call records (with WhatsApp's
terminate record), users' call-permission replies, the webhook dedupe memory, a
journal of webhook events accepted but not yet handled, the calls this
process owns while they run (so a successor can end them after a crash), and the
outbox of events for the business backend not yet delivered (:mod:`gateway.outbox`).

Any implementation must keep these promises:

* :meth:`Store.journal` is atomic per event: "have I seen this dedupe key?" and
  "remember the key and journal the event" happen as one step (SQL: one
  transaction with ``INSERT OR IGNORE``; Redis: ``SET key NX`` plus the append in
  one script). It returns only when the new events are durable: the webhook
  receiver answers 200 after it, so a crash after the 200 loses nothing.
* Writes of one process are applied in the order they were awaited.
* Nothing here is SQL: ids are opaque strings, times are unix seconds (float).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..events import Event, PermissionReply
from ..records import CallRecord


@dataclass(frozen=True)
class OutboxEvent:
    """An event for the business backend waiting in the outbox; its body is sent byte
    for byte on every attempt (so its signature never changes)."""

    id: str
    type: str
    body: bytes
    created_at: float
    attempts: int = 0
    next_attempt_at: float = 0.0


@dataclass(frozen=True)
class JournalEntry:
    """A webhook event as the journal holds it until it was handled."""

    id: str  # opaque, assigned by the store
    event: Event
    received_at: float


class Store(Protocol):
    """Durable state of one gateway process (see the module docstring for the promises)."""

    async def open(self) -> None:
        """Connect, create or migrate the schema; StoreError if that is impossible."""
        ...

    async def close(self) -> None:
        """Flush and release everything (idempotent)."""
        ...

    # --- webhook events ------------------------------------------------------

    async def journal(self, events: Sequence[Event]) -> list[JournalEntry]:
        """Journal the events whose dedupe key is new; duplicates are left out of the result.

        Atomic per event (seen-check and append together), durable on return.
        """
        ...

    async def mark_handled(self, entry_id: str) -> None:
        """The event was handled: it will not be replayed (its dedupe key stays)."""
        ...

    async def unhandled(self) -> list[JournalEntry]:
        """Journaled events not marked handled, oldest first (replayed at start-up)."""
        ...

    # --- call records ----------------------------------------------------------

    async def save_call(self, record: CallRecord) -> None:
        """Insert or replace the record of ``record.call_id``."""
        ...

    async def get_call(self, call_id: str) -> CallRecord | None:
        """The record of one call, if kept."""
        ...

    async def recent_calls(self, limit: int) -> list[CallRecord]:
        """Up to ``limit`` records, newest (by ``created_at``) first."""
        ...

    async def live_calls(self) -> list[CallRecord]:
        """Records this process (or a dead predecessor of it) saved that are not ENDED."""
        ...

    # --- call permissions --------------------------------------------------------

    async def save_permission_reply(self, reply: PermissionReply) -> None:
        """Keep a user's latest reply to a call permission request."""
        ...

    async def permission_reply(self, wa_id: str) -> PermissionReply | None:
        """The latest reply from ``wa_id``, if kept."""
        ...

    # --- outbox of events for the business backend -------------------------------------

    async def outbox_add(self, event: OutboxEvent) -> None:
        """Keep an event until it is delivered or given up (one of the same id is
        replaced); durable on return."""
        ...

    async def outbox_due(self, now: float, limit: int) -> list[OutboxEvent]:
        """Up to ``limit`` events whose next attempt is due at ``now``, soonest due first."""
        ...

    async def outbox_next_due(self) -> float | None:
        """When the earliest event is due; None when the outbox is empty."""
        ...

    async def outbox_retry(self, event_id: str, attempts: int, next_attempt_at: float) -> None:
        """Record a failed attempt and when to try again."""
        ...

    async def outbox_remove(self, event_id: str) -> None:
        """Forget an event (delivered, or given up)."""
        ...

    # --- retention -------------------------------------------------------------------

    async def prune(self, before: float) -> int:
        """Forget ended calls, dedupe keys, replies and stale journal entries older than
        ``before`` (unix seconds); returns how many items went. Live calls are kept."""
        ...
