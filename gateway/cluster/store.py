"""The :class:`gateway.store.Store` of a cluster worker: everything in the shared Redis.

Every worker reads what any worker wrote: call records (with Meta's terminate
record), permission replies and the webhook dedupe memory. What stays per worker
is what only that worker can act on: its journal of accepted events (a stream)
and its live calls (the set the cluster's reaper ends if the worker dies).

Dedupe keys are one ZSET (key -> time) so that pruning can count what it
forgets; see :mod:`.keys` for every key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from ..errors import StoreError
from ..events import Event, PermissionReply, encode_event
from ..records import CallRecord, CallState
from ..store import JournalEntry, OutboxEvent
from ..store.codec import decode_event, dedupe_key
from . import keys
from .client import connect
from .records import FinalEnd, RecordWriter

SEEN, CALLS, PERMISSIONS = keys.SEEN, keys.CALLS, keys.PERMISSIONS
DEDUPE_SECONDS = 3 * 24 * 3600

# Dedupe and journal in one step: the event is journaled only if its key is new.
_JOURNAL = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2]) == 1 then
  return redis.call('XADD', KEYS[2], '*', 'event', ARGV[3], 'at', ARGV[1])
end
return false
"""


# A lost worker's outbox moved into this worker's, whole or not at all.
# KEYS[1], KEYS[2]: the lost worker's due ZSET and events HASH; KEYS[3], KEYS[4]: this
# worker's. Returns how many events moved. An event of the same id already here (the
# reaper's own call.ended of the same call) is kept: it carries the end Redis kept.
_ADOPT = """
local moved = 0
local rows = redis.call('HGETALL', KEYS[2])
for i = 1, #rows, 2 do
  local id = rows[i]
  if redis.call('HSETNX', KEYS[4], id, rows[i + 1]) == 1 then
    local due = redis.call('ZSCORE', KEYS[1], id)
    redis.call('ZADD', KEYS[3], due or 0, id)
    moved = moved + 1
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return moved
"""


class RedisStore:
    """:class:`gateway.store.Store` on the cluster's Redis, for worker ``worker``."""

    def __init__(self, redis_url: str, worker: str) -> None:
        self.redis: Any = connect(redis_url)
        self.worker = worker
        self._journal = self.redis.register_script(_JOURNAL)
        self._adopt = self.redis.register_script(_ADOPT)
        self.records = RecordWriter(self.redis)
        # Told the id of a live call whose stored record another worker ended (this
        # worker was taken for lost), and that end: the cluster node ends the call here
        # too, with that end.
        self.on_ended_elsewhere: Callable[[str, FinalEnd], None] | None = None
        # Writes of this process are applied in the order they were made (a pooled
        # client would otherwise let a later write overtake an earlier one).
        self._writes = asyncio.Lock()
        # A worker's id is new at every start: until this store wrote something, its
        # journal and live calls are empty without asking (so a worker starts while
        # Redis is down, and reconnects later).
        self._wrote = False

    async def open(self) -> None:
        """Nothing to create; an unreachable Redis is not fatal (the worker reconnects)."""

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()

    # --- webhook events ------------------------------------------------------

    async def journal(self, events: Sequence[Event]) -> list[JournalEntry]:
        """Journal the events whose dedupe key is new (one atomic script per event)."""
        entries = []
        self._wrote = True
        try:
            for event in events:
                now = time.time()
                entry_id = await self._journal(
                    keys=[SEEN, keys.journal(self.worker)],
                    args=[repr(now), dedupe_key(event), encode_event(event)],
                )
                if entry_id:
                    entries.append(JournalEntry(str(entry_id), event, now))
        except RedisError as exc:
            raise StoreError(f"Redis: {exc}") from None
        return entries

    async def mark_handled(self, entry_id: str) -> None:
        """Drop the entry from this worker's journal (its dedupe key stays)."""
        await self._run(self.redis.xdel(keys.journal(self.worker), entry_id))

    async def unhandled(self) -> list[JournalEntry]:
        """This worker's journal, oldest first (a new worker's is empty)."""
        if not self._wrote:
            return []
        rows = await self._run(self.redis.xrange(keys.journal(self.worker)))
        return [
            JournalEntry(entry_id, decode_event(fields["event"]), float(fields["at"]))
            for entry_id, fields in rows
        ]

    # --- call records ----------------------------------------------------------

    def add_missing(self, pipe: Any, record: CallRecord) -> None:
        """Add to ``pipe`` the writes of the record if Redis lost it (the lease renewal)."""
        pipe.set(keys.record(record.call_id), json.dumps(record.as_dict()), nx=True)
        pipe.zadd(CALLS, {record.call_id: record.created_at}, nx=True)
        if record.state != CallState.ENDED:
            pipe.sadd(keys.worker_calls(self.worker), record.call_id)

    async def save_call(self, record: CallRecord) -> None:
        """Insert or replace the record (one round trip, in the order of the calls),
        keeping the statuses and terminate record other workers saved into it (they are
        added to ``record`` too; see :mod:`.records`)."""
        self._wrote = True

        async def save() -> FinalEnd | None:
            async with self._writes:
                return await self.records.save(record, live_of=self.worker)

        end = await self._run(save())
        if end is not None and self.on_ended_elsewhere is not None:
            self.on_ended_elsewhere(record.call_id, end)

    async def get_call(self, call_id: str) -> CallRecord | None:
        """The record any worker saved, or None."""
        raw = await self._run(self.redis.get(keys.record(call_id)))
        return None if raw is None else CallRecord.from_dict(json.loads(raw))

    async def get_calls(self, call_ids: Sequence[str]) -> list[CallRecord]:
        """The records of these calls that exist, in the same order."""
        if not call_ids:
            return []
        raws = await self._run(self.redis.mget([keys.record(c) for c in call_ids]))
        return [CallRecord.from_dict(json.loads(r)) for r in raws if r is not None]

    async def recent_calls(self, limit: int) -> list[CallRecord]:
        """Up to ``limit`` records of the whole cluster, newest first."""
        if limit <= 0:
            return []
        ids = await self._run(self.redis.zrevrange(CALLS, 0, limit - 1))
        return await self.get_calls(ids)

    async def live_calls(self) -> list[CallRecord]:
        """This worker's saved calls that are not ENDED (other workers' are theirs, and
        a lost worker's are ended by the cluster's reaper)."""
        if not self._wrote:
            return []
        ids = await self._run(self.redis.smembers(keys.worker_calls(self.worker)))
        records = await self.get_calls(sorted(ids))
        live = [r for r in records if r.state != CallState.ENDED]
        return sorted(live, key=lambda r: r.created_at)

    # --- call permissions --------------------------------------------------------

    async def save_permission_reply(self, reply: PermissionReply) -> None:
        """Keep a user's latest reply (with when it was saved, for pruning)."""
        value = json.dumps({"at": time.time(), "reply": encode_event(reply)})

        async def save() -> None:
            async with self._writes:
                await self.redis.hset(PERMISSIONS, reply.from_, value)

        await self._run(save())

    async def permission_reply(self, wa_id: str) -> PermissionReply | None:
        """The latest reply any worker saved, or None."""
        raw = await self._run(self.redis.hget(PERMISSIONS, wa_id))
        if raw is None:
            return None
        reply = decode_event(json.loads(raw)["reply"])
        return reply if isinstance(reply, PermissionReply) else None

    # --- outbox of events for the business backend (this worker's) -----------------------

    def _outbox_keys(self, worker: str | None = None) -> tuple[str, str]:
        # ZSET event id -> next attempt time, and HASH event id -> the event.
        return keys.outbox_due(worker or self.worker), keys.outbox(worker or self.worker)

    async def outbox_take_over(self, worker: str) -> int:
        """Move a lost worker's undelivered events into this worker's outbox (one atomic
        script); returns how many moved."""

        async def adopt() -> int:
            async with self._writes:
                moved = await self._adopt(keys=[*self._outbox_keys(worker), *self._outbox_keys()])
                return int(moved)

        result: int = await self._run(adopt())
        return result

    async def outbox_add(self, event: OutboxEvent) -> None:
        """Keep the event, replacing one of the same id (one round trip)."""
        due, events = self._outbox_keys()

        async def add() -> None:
            async with self._writes, self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(events, event.id, _outbox_json(event))
                pipe.zadd(due, {event.id: event.next_attempt_at})
                await pipe.execute()

        await self._run(add())

    async def outbox_due(self, now: float, limit: int) -> list[OutboxEvent]:
        """Due events, soonest first."""
        if limit <= 0:
            return []
        due, events = self._outbox_keys()
        ids = await self._run(self.redis.zrangebyscore(due, "-inf", now, start=0, num=limit))
        if not ids:
            return []
        raws = await self._run(self.redis.hmget(events, ids))
        found = [_outbox_event(r) for r in raws if r is not None]
        return sorted(found, key=lambda e: (e.next_attempt_at, e.created_at))

    async def outbox_next_due(self) -> float | None:
        """The earliest next attempt."""
        due, _ = self._outbox_keys()
        first = await self._run(self.redis.zrange(due, 0, 0, withscores=True))
        return float(first[0][1]) if first else None

    async def outbox_retry(self, event_id: str, attempts: int, next_attempt_at: float) -> None:
        """Note the failed attempt."""
        _, events = self._outbox_keys()
        raw = await self._run(self.redis.hget(events, event_id))
        if raw is None:
            return
        event = _outbox_event(raw)
        updated = OutboxEvent(
            event.id, event.type, event.body, event.created_at, attempts, next_attempt_at
        )
        await self.outbox_add(updated)

    async def outbox_remove(self, event_id: str) -> None:
        """Drop the event."""
        due, events = self._outbox_keys()

        async def remove() -> None:
            async with self._writes, self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(events, event_id)
                pipe.zrem(due, event_id)
                await pipe.execute()

        await self._run(remove())

    # --- retention -------------------------------------------------------------------

    async def prune(self, before: float) -> int:
        """Forget ended calls, dedupe keys, replies and journal entries older than ``before``."""

        async def prune() -> int:
            removed: int = 0
            old_ids = await self.redis.zrangebyscore(CALLS, "-inf", f"({before}")
            for record in await self.get_calls(old_ids):
                if record.state == CallState.ENDED and (record.ended_at or 0) < before:
                    await self.redis.delete(keys.record(record.call_id))
                    await self.redis.zrem(CALLS, record.call_id)
                    removed += 1
            # Meta retries a delivery for about 3 days: older dedupe keys only cost memory.
            seen_before = max(before, time.time() - DEDUPE_SECONDS)
            removed += int(await self.redis.zremrangebyscore(SEEN, "-inf", f"({seen_before}"))
            minid = f"{int(before * 1000)}-0"
            removed += int(await self.redis.xtrim(keys.journal(self.worker), minid=minid))
            for wa_id, raw in (await self.redis.hgetall(PERMISSIONS)).items():
                if json.loads(raw)["at"] < before:
                    removed += int(await self.redis.hdel(PERMISSIONS, wa_id))
            return removed

        result: int = await self._run(prune())
        return result

    async def _run(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise StoreError(f"Redis: {exc}") from None


def _outbox_json(event: OutboxEvent) -> str:
    return json.dumps(
        {
            "id": event.id,
            "type": event.type,
            "body": base64.b64encode(event.body).decode(),
            "created_at": event.created_at,
            "attempts": event.attempts,
            "next_attempt_at": event.next_attempt_at,
        }
    )


def _outbox_event(raw: str) -> OutboxEvent:
    data = json.loads(raw)
    return OutboxEvent(
        data["id"],
        data["type"],
        base64.b64decode(data["body"]),
        float(data["created_at"]),
        int(data["attempts"]),
        float(data["next_attempt_at"]),
    )
