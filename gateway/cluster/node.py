"""One worker's membership of the cluster: its Redis connection, its lease, the
mirror of its calls in Redis, and its reaper (:mod:`.reaper`), which ends a lost
worker's calls.

Nothing here runs per frame or per packet: Redis sees a call when it starts,
changes state and ends, plus one pipelined lease renewal per worker every
``lease_seconds / 10``. That renewal also re-registers every live call, so a
Redis that restarted without its data knows every call again within one tick.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ..calls import Call, CallManager, CallState
from ..errors import UnavailableError
from ..graph import GraphClient
from . import keys
from .client import connect
from .reaper import Reaper
from .records import FinalEnd, RecordWriter

if TYPE_CHECKING:
    from .store import RedisStore

log = logging.getLogger(__name__)

# How long records, deduplication marks and permission replies are kept.
RECORD_TTL = 7 * 24 * 3600
RECENT_KEPT = 1000


def new_worker_id() -> str:
    """A worker's id: host, pid and a random tail (a restarted worker is a new one)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class WorkerNode:
    """This worker in the cluster: identity, lease, call mirror and reaper."""

    def __init__(
        self,
        redis_url: str,
        calls: CallManager,
        graph: GraphClient,
        *,
        lease_seconds: float = 10.0,
        figures: Callable[[], dict[str, float]] | None = None,
        worker_id: str | None = None,
        store: RedisStore | None = None,
    ) -> None:
        # Call records live in the store (the cluster's Redis); the node re-saves
        # live calls' records from it when Redis lost them.
        self.store = store
        # Process figures published with the load (CPU and call seconds, memory).
        self._figures = figures or dict
        # Typed Any: redis-py's hints cannot know that decode_responses gives str.
        self.redis: Any = connect(redis_url)
        self.blocking: Any = connect(redis_url, blocking=True)
        # Writes of call records that keep what other workers reported into them.
        self.records = RecordWriter(self.redis)
        self.calls = calls
        self.graph = graph
        self.id = worker_id or new_worker_id()
        self.lease_seconds = lease_seconds
        # The lease outlives several missed renewals (a busy event loop is not a dead worker).
        self.lease_ttl_ms = int(lease_seconds * 600)
        self.tick = max(0.2, lease_seconds / 10)
        self.connected = False
        self.reconnects = 0
        self.outages = 0
        # Live calls of this worker that another worker had ended (this worker was
        # taken for lost while it stalled); ended here too, each once.
        self.ended_elsewhere_calls = 0
        self._ending_elsewhere: set[str] = set()
        # Calls whose record changed since the last write, with a change number.
        self._dirty: dict[str, tuple[int, Call]] = {}
        self._changes = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Ends lost workers' calls (:mod:`.reaper`).
        self.reaper = Reaper(self)
        calls.observers.append(self)
        if store is not None:
            store.on_ended_elsewhere = self.ended_elsewhere

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Register and start the lease, mirror and reaper loops.

        An unreachable Redis does not stop the worker: it keeps retrying (and
        answers 503 to what needs Redis meanwhile).
        """
        try:
            await self.renew()
        except RedisError as exc:
            self.went_down(exc)
        log.info("cluster worker %s (lease %.0f s)", self.id, self.lease_seconds)
        self.spawn(self._lease_loop(), "cluster-lease")
        self.spawn(self._mirror_loop(), "cluster-mirror")
        self.spawn(self.reaper.run(), "cluster-reaper")

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Start a background task owned by this node (cancelled by :meth:`aclose`)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Write what is pending, leave the cluster, close the connections."""
        try:
            async with asyncio.timeout(2):
                await self._flush()
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.delete(keys.lease(self.id), keys.inbox(self.id))
                    pipe.hdel(keys.WORKERS, self.id)
                    await pipe.execute()
        except (RedisError, TimeoutError) as exc:
            log.warning("cluster worker %s left without deregistering: %s", self.id, exc)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            # Bounded: a task stuck in a Redis client read must not keep the worker
            # from exiting (seen once in 40 shutdowns; logged with its stack if so).
            _, stuck = await asyncio.wait(set(self._tasks), timeout=3)
            for task in stuck:
                buffer = io.StringIO()
                task.print_stack(file=buffer)
                log.error("cluster: task %s did not stop: %s", task.get_name(), buffer.getvalue())
        for client in (self.redis, self.blocking):
            try:
                async with asyncio.timeout(2):
                    await client.aclose()
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("cluster: closing a Redis connection failed: %s", exc)

    # --- connection state ------------------------------------------------------------

    def went_down(self, exc: BaseException) -> None:
        """Note an outage once (logs and metrics), however many requests hit it."""
        if self.connected or self.outages == 0:
            self.outages += 1
            log.error("cluster: Redis unreachable (%s); retrying, calls keep running", exc)
        self.connected = False

    def came_up(self) -> None:
        """Note that Redis answers again."""
        if not self.connected:
            if self.outages:
                self.reconnects += 1
                log.warning("cluster: Redis reachable again; live calls re-registered")
            self.connected = True

    def unavailable(self, exc: BaseException) -> UnavailableError:
        """The error to raise to a request that needed Redis."""
        self.went_down(exc)
        return UnavailableError(f"cluster state (Redis) unreachable: {exc}")

    # --- lease -------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """What other workers see of this one (placement), and its figures (``/cluster``)."""
        return {
            "calls": self.calls.load,
            "max": self.calls.max_calls,
            "draining": not self.calls.accepting,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "at": time.time(),
            **self._figures(),
        }

    async def renew(self) -> None:
        """Renew the lease in one round trip; re-register the live calls if Redis lost them.

        Redis lost them when it counts fewer calls for this worker than it has (a
        restart without persistence, a flush): then one more round trip writes
        every live call's owner, live-set entry and (if missing) record again.
        """
        load = json.dumps(self.load())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.lease(self.id), load, px=self.lease_ttl_ms)
            pipe.hset(keys.WORKERS, self.id, load)
            pipe.scard(keys.worker_calls(self.id))
            *_, known = await pipe.execute()
        live = [c for c in list(self.calls.calls.values()) if c.state is not CallState.ENDED]
        if known < len(live):
            await self._register_again(live)
        self.came_up()

    async def _register_again(self, live: list[Call]) -> None:
        """Register again the live calls Redis lost, and end here those another worker
        ended: Redis also counts fewer calls for this worker when a reaper took it for
        lost (its lease lapsed during a stall) and ended its calls. A call's record
        tells the two apart: the reaper leaves it ENDED, a Redis that lost its data
        has none (or an older one that is not ENDED)."""
        raws = await self.redis.mget([keys.record(c.id) for c in live])
        stored = {call.id: json.loads(raw) for call, raw in zip(live, raws, strict=True) if raw}
        ended = {
            call_id: FinalEnd.of(record)
            for call_id, record in stored.items()
            if record.get("state") == CallState.ENDED
        }
        kept = [call for call in live if call.id not in ended]
        if kept:
            async with self.redis.pipeline(transaction=False) as pipe:
                for call in kept:
                    self.register(pipe, call.id)
                    if self.store is not None:
                        self.store.add_missing(pipe, call.record)
                await pipe.execute()
            log.info("cluster: %d live call(s) registered again", len(kept))
        for call_id in sorted(ended):
            self.ended_elsewhere(call_id, ended[call_id])

    def ended_elsewhere(self, call_id: str, end: FinalEnd) -> None:
        """End here, once, a live call whose record another worker ended.

        That worker took this one for lost (its lease lapsed while it stalled) and
        ended the call: it sent WhatsApp the ``terminate``, so none is sent again,
        and the record keeps that first end (see :mod:`.records`). Here the call's
        media, bot and slot are freed, and its copy of the record ends with the end
        Redis kept (reason and time), which its ``call.ended`` event carries too.
        """
        call = self.calls.calls.get(call_id)
        if call is None or call_id in self._ending_elsewhere:
            return  # not live here, or told already
        self._ending_elsewhere.add(call_id)
        if call.state is not CallState.ENDING:  # else ending here already: it takes the end
            self.ended_elsewhere_calls += 1
            log.error(
                "call %s: another worker ended it while this worker was taken for lost"
                " (lease lapsed); ending it here",
                call_id,
            )
        call.end(end.reason, terminate=False, ended_at=end.at)

    def register(self, pipe: Any, call_id: str) -> None:
        """Add to ``pipe`` what records this worker as the owner of a live call."""
        pipe.hset(keys.OWNERS, call_id, self.id)
        pipe.sadd(keys.LIVE, call_id)
        pipe.sadd(keys.worker_calls(self.id), call_id)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.renew()
            except RedisError as exc:
                self.went_down(exc)

    # --- the mirror of this worker's calls ------------------------------------------

    def call_started(self, call: Call) -> None:
        """Mirror the new call (a :class:`gateway.call.CallObserver` hook)."""
        self._mark(call)

    def call_answered(self, call: Call) -> None:
        """Mirror the call's ACTIVE record."""
        self._mark(call)

    def call_ended(self, call: Call) -> None:
        """Mirror the ended record and drop the call from the live set."""
        self._ending_elsewhere.discard(call.id)
        self._mark(call)

    def call_refused(self, call_id: str, reason: str) -> None:
        """Nothing to mirror: a refused call was never ours."""

    def _mark(self, call: Call) -> None:
        # Only note it here (observers must not block); one task writes, in order.
        self._changes += 1
        self._dirty[call.id] = (self._changes, call)
        self._wake.set()

    async def _mirror_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except RedisError as exc:
                self.went_down(exc)
                await asyncio.sleep(self.tick)
                self._wake.set()

    async def _flush(self) -> None:
        if not self._dirty:
            return
        batch = dict(self._dirty)
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, call in batch.values():
                # The record itself is the store's (the call manager saves it).
                if call.state is CallState.ENDED:
                    pipe.hdel(keys.OWNERS, call.id)
                    pipe.srem(keys.LIVE, call.id)
                    pipe.srem(keys.worker_calls(self.id), call.id)
                    # WhatsApp's terminate that follows is handed to this worker.
                    pipe.set(keys.ended_on(call.id), self.id, ex=keys.ENDED_ON_SECONDS)
                else:
                    self.register(pipe, call.id)
            load = json.dumps(self.load())
            # Never listed without a lease: another worker's reaper takes a listed
            # worker without one for lost, and ends its calls (after Redis restarted
            # empty, this write can come before the next renewal's).
            pipe.set(keys.lease(self.id), load, px=self.lease_ttl_ms)
            pipe.hset(keys.WORKERS, self.id, load)
            await pipe.execute()
        for call_id, entry in batch.items():
            if self._dirty.get(call_id) == entry:  # not changed again meanwhile
                del self._dirty[call_id]
        self.came_up()
