"""The reaper: how a worker ends the calls of a worker that was lost.

Every worker looks, every lease tick, for workers listed in the cluster without a
lease (it lapsed: the process died, its machine was lost, or it stalled past the
lease). One of them takes the lost worker's reaping lock, and for each of its calls:

1. sends WhatsApp the ``terminate`` (unless its record says ENDED already: the
   reaper before this one did, then died);
2. writes the record ENDED with the end reason ``worker <id> lost`` (a record's
   first end is final, :mod:`.records`);
3. queues the backend's ``call.ended`` in its own outbox (when events are on),
   with the record Redis keeps, once WhatsApp's terminate record is on it or after
   ``terminate_wait``, and with the id the lost owner would have given it
   (:func:`gateway.outbox.event_id`): an owner that was only stalled and sends its
   own is de-duplicated by the backend, and carries the same end
   (:meth:`.node.WorkerNode.ended_elsewhere`);
4. only then takes the call out of the lost worker's set.

Then the lost worker's undelivered events (its outbox in Redis) move to this
worker's outbox, its inbox is handled (the router's hooks), and it is unlisted.
A reaper that dies midway leaves what it did not finish in Redis: the calls still
in the set, the outbox, and the lock, which expires; the next reaper finishes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisError

from ..errors import GraphAPIError, StoreError
from ..records import CallRecord, CallState
from ..shutdown import stop_if_cancelled
from . import keys

if TYPE_CHECKING:
    from ..graph import GraphClient
    from ..outbox import EventOutbox
    from .records import RecordWriter
    from .store import RedisStore

log = logging.getLogger(__name__)

# How long one reaper holds a lost worker (it releases it when done; this is for a
# reaper that dies midway). Longer than ending the calls takes (terminate_wait).
LOCK_SECONDS = 60


class ReapingWorker(Protocol):
    """What the reaper needs of the worker it runs in (:class:`.node.WorkerNode`)."""

    id: str
    redis: Any
    tick: float
    graph: GraphClient
    records: RecordWriter
    store: RedisStore | None

    def went_down(self, exc: BaseException) -> None:
        """Note that Redis could not be reached (``exc``)."""


class Reaper:
    """Ends the calls of lost workers, for one worker (``node``)."""

    def __init__(self, node: ReapingWorker) -> None:
        self.node = node
        self.reaped_calls = 0
        # Awaited with a lost worker's id after its calls were ended.
        self.hooks: list[Callable[[str], Awaitable[None]]] = []
        # This worker's events to the business backend (GATEWAY_EVENTS_URL), if any: a
        # lost worker's calls get their call.ended from here (and its outbox moves here).
        self.events: EventOutbox | None = None

    async def run(self) -> None:
        """Look for lost workers every lease tick (the node's task)."""
        while True:
            stop_if_cancelled()  # ending calls runs more than Redis (the Graph API's client)
            await asyncio.sleep(self.node.tick)
            try:
                await self.reap_lost_workers()
            except (RedisError, StoreError) as exc:
                # What is not done stays in Redis (the lost worker's set, its outbox,
                # the lock, which expires): the next reaper finishes it.
                self.node.went_down(exc)

    async def reap_lost_workers(self) -> None:
        """End the calls of every listed worker without a lease that no one else reaps."""
        redis = self.node.redis
        workers = [w for w in await redis.hkeys(keys.WORKERS) if w != self.node.id]
        if not workers:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.exists(keys.lease(worker))
            alive = await pipe.execute()
        for worker, up in zip(workers, alive, strict=True):
            lock = keys.reaping(worker)
            if not up and await redis.set(lock, self.node.id, nx=True, ex=LOCK_SECONDS):
                if await redis.exists(keys.lease(worker)):
                    # It renewed its lease since it was listed: not lost.
                    await redis.delete(lock)
                    continue
                await self._reap(worker)

    async def _reap(self, worker: str) -> None:
        redis = self.node.redis
        call_ids = sorted(await redis.smembers(keys.worker_calls(worker)))
        log.error(
            "cluster: worker %s lost (lease expired); ending its %d call(s)", worker, len(call_ids)
        )
        await asyncio.gather(*(self._end_orphan(worker, c) for c in call_ids))
        store = self.node.store
        if self.events is not None and store is not None:
            # Its events not delivered yet (a call.started, a call.ended waiting for a
            # backend that was down) are this worker's to deliver now; after the calls'
            # call.ended above, which carry the end Redis kept and so are kept.
            moved = await store.outbox_take_over(worker)
            self.events.took_over(moved)
            if moved:
                log.warning("cluster: %d undelivered event(s) of %s taken over", moved, worker)
        for hook in self.hooks:
            await hook(worker)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.worker_calls(worker), keys.inbox(worker))
            pipe.hdel(keys.WORKERS, worker)
            # Reaped: a worker that was only stalled comes back (and ends the calls
            # ended here, WorkerNode._register_again); if it is lost again later, it
            # is reaped again at once, not when this lock expires.
            pipe.delete(keys.reaping(worker))
            await pipe.execute()

    async def _end_orphan(self, worker: str, call_id: str) -> None:
        """End a lost worker's call (steps 1-4 of the module's docs)."""
        redis = self.node.redis
        reason = f"worker {worker} lost"
        # Unowned before its record says ENDED: an event for it meanwhile waits for the
        # record (the router), and a terminate then goes into it.
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.record(call_id))
            pipe.hdel(keys.OWNERS, call_id)
            pipe.srem(keys.LIVE, call_id)
            raw, *_ = await pipe.execute()
        record: dict[str, Any] = json.loads(raw) if raw else {"call_id": call_id}
        if record.get("state") != CallState.ENDED:
            try:
                await self.node.graph.terminate(call_id)
            except GraphAPIError as exc:
                # Usually: the call had already ended on WhatsApp's side.
                log.warning("call %s: terminate after %s failed: %s", call_id, reason, exc)
            record.update(state=str(CallState.ENDED), end_reason=reason, ended_at=time.time())
            record = await self.node.records.write(record)
            self.reaped_calls += 1
            log.warning("call %s: ended by %s (%s)", call_id, self.node.id, reason)
        if self.events is not None:
            await self._send_ended(self.events, record)
        await redis.srem(keys.worker_calls(worker), call_id)

    async def _send_ended(self, events: EventOutbox, record: dict[str, Any]) -> None:
        """Queue the call's ``call.ended`` (stored before this returns) with the record
        Redis keeps once WhatsApp's terminate record (its answer to the terminate,
        through whichever worker) is on it, or as it is after ``terminate_wait``: the
        owner's ``call.ended`` waits as long for it; the owner's event id."""
        call_id = str(record["call_id"])
        if "direction" not in record:
            # Redis lost the record (a restart without its data): nothing to tell.
            log.error("call %s: no record; no call.ended for the backend", call_id)
            return

        async def reread() -> CallRecord | None:
            raw = await self.node.redis.get(keys.record(call_id))
            return CallRecord.from_dict(json.loads(raw)) if raw else None

        ended = await events.with_terminate_record(CallRecord.from_dict(record), reread)
        event = await events.add("call.ended", ended)
        log.info("call %s: call.ended %s queued for its lost owner", call_id, event.id)
