"""New calls in a cluster: a Redis Stream read by a consumer group.

A user's new call (a ``connect`` offer) is added to the stream by whichever
worker received its webhook. Only workers with room read from it, so the call
lands on one of them, exactly once, and Redis spreads calls over idle workers in
turn. A call no worker took within the answer timeout is rejected; the new calls
a lost worker read but never claimed are taken over by the worker that reaps it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError, ResponseError

from ..calls import CallManager
from ..events import CallConnect, decode_event, encode_event
from . import keys
from .keys import BLOCK_MS, STREAM_MAXLEN
from .node import WorkerNode

log = logging.getLogger(__name__)


class Placement:
    """This worker's side of the new-call stream: adding calls, and taking them."""

    def __init__(self, node: WorkerNode, calls: CallManager, *, answer_timeout: float) -> None:
        self.node = node
        self.calls = calls
        self.answer_timeout = answer_timeout

    async def start(self) -> None:
        """Create the consumer group (once per cluster) and start taking new calls."""
        await self._create_group()
        self.node.spawn(self._read(), "cluster-placement")

    async def offer(self, event: CallConnect) -> None:
        """Add a new call to the stream, for a worker with room to take."""
        fields = {"event": encode_event(event), "at": str(time.time())}
        await self.node.redis.xadd(keys.NEW_CALLS, fields, maxlen=STREAM_MAXLEN, approximate=True)

    async def take_over(self, worker: str) -> None:
        """Take the new calls a lost worker read but never claimed (it died in
        between), so each is still answered once."""
        redis = self.node.redis
        pending = await redis.xpending_range(
            keys.NEW_CALLS, keys.PLACERS, min="-", max="+", count=100, consumername=worker
        )
        ids = [p["message_id"] for p in pending]
        if ids:
            claimed = await redis.xclaim(
                keys.NEW_CALLS, keys.PLACERS, self.node.id, min_idle_time=0, message_ids=ids
            )
            log.warning("cluster: taking %d new call(s) %s had read", len(claimed), worker)
            for entry_id, fields in claimed:
                if fields:
                    await self._take(entry_id, fields)
        await redis.xgroup_delconsumer(keys.NEW_CALLS, keys.PLACERS, worker)

    async def _read(self) -> None:
        while True:
            if not self.calls.has_room:
                await asyncio.sleep(0.1)
                continue
            try:
                async with asyncio.timeout(BLOCK_MS / 1000 + 5):
                    batch = await self.node.blocking.xreadgroup(
                        keys.PLACERS,
                        self.node.id,
                        {keys.NEW_CALLS: ">"},
                        count=1,
                        block=BLOCK_MS,
                    )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create_group()
                continue
            except (RedisError, OSError, TimeoutError) as exc:
                self.node.went_down(exc)
                await asyncio.sleep(self.node.tick)
                continue
            for _stream, entries in batch or ():
                for entry_id, fields in entries:
                    await self._take(entry_id, fields)

    async def _create_group(self) -> None:
        try:
            await self.node.redis.xgroup_create(keys.NEW_CALLS, keys.PLACERS, id="0", mkstream=True)
            log.info("cluster: created the new-call consumer group")
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        except RedisError as exc:
            self.node.went_down(exc)
            await asyncio.sleep(self.node.tick)

    async def _take(self, entry_id: str, fields: dict[str, str]) -> None:
        redis = self.node.redis
        try:
            event = decode_event(fields["event"])
            age = time.time() - float(fields.get("at", "0"))
        except (KeyError, ValueError) as exc:
            log.error("cluster: unreadable new-call entry %s dropped: %s", entry_id, exc)
            await self._ack(entry_id)
            return
        assert isinstance(event, CallConnect)
        if not self.calls.has_room:  # filled up while we were blocked: hand it back
            await redis.xadd(keys.NEW_CALLS, fields, maxlen=STREAM_MAXLEN, approximate=True)
            await self._ack(entry_id)
            return
        if age > self.answer_timeout:
            log.warning("call %s: waited %.1f s for a worker; rejected", event.call_id, age)
            self.calls.reject(event.call_id, "capacity", "no worker took it in time")
            await self._ack(entry_id)
            return
        early = None
        try:  # claim it, take it off the stream, and look for an early terminate: one trip
            async with redis.pipeline(transaction=False) as pipe:
                self.node.register(pipe, event.call_id)
                pipe.xack(keys.NEW_CALLS, keys.PLACERS, entry_id)
                pipe.xdel(keys.NEW_CALLS, entry_id)
                pipe.get(keys.early_terminate(event.call_id))
                early = (await pipe.execute())[-1]
        except RedisError as exc:
            # The call is ours now whatever Redis says; the lease renewal registers it.
            self.node.went_down(exc)
        if early is not None:
            self.calls.dispatch(decode_event(early))
        self.calls.dispatch(event)

    async def _ack(self, entry_id: str) -> None:
        async with self.node.redis.pipeline(transaction=False) as pipe:
            pipe.xack(keys.NEW_CALLS, keys.PLACERS, entry_id)
            pipe.xdel(keys.NEW_CALLS, entry_id)
            await pipe.execute()
