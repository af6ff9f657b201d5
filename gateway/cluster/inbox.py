"""A worker's inbox: the Redis Stream other workers hand events and requests to.

An event for a call this worker owns (a ``terminate``, a ``status``) is handed
to its handler; a request (``hang_up``) is answered on a reply list named in the
request, which the asking worker waits on for up to ``REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from ..errors import UnavailableError
from ..events import Event, decode_event, encode_event
from ..shutdown import stop_if_cancelled
from . import keys
from .keys import BLOCK_MS, STREAM_MAXLEN
from .node import WorkerNode

log = logging.getLogger(__name__)

# How long a worker waits for the owner to answer a forwarded request.
REQUEST_TIMEOUT = 10.0


class Inbox:
    """Sending to other workers' inboxes, and serving this worker's own."""

    def __init__(
        self,
        node: WorkerNode,
        *,
        on_event: Callable[[Event], Awaitable[None]],
        on_hang_up: Callable[[str], Awaitable[Any]],
    ) -> None:
        self.node = node
        self._on_event = on_event
        self._on_hang_up = on_hang_up

    def start(self) -> None:
        """Start serving this worker's inbox."""
        self.node.spawn(self._read(), "cluster-inbox")

    async def send_event(self, worker: str, event: Event) -> None:
        """Hand an event to the worker that owns its call."""
        await self._send(worker, {"event": encode_event(event)})

    async def request_hang_up(self, worker: str, call_id: str) -> Any:
        """Ask the worker to hang up its call; its answer (the record, or None)."""
        return await self._request(worker, {"op": "hang_up", "call_id": call_id})

    async def take_over(self, worker: str) -> None:
        """Serve what a lost worker never read from its inbox (once its calls were
        ended): WhatsApp's terminate record of a call must not vanish with it, and a
        worker waiting for an answer gets one now (the call is no longer live)."""
        async with self.node.redis.pipeline(transaction=True) as pipe:
            pipe.xrange(keys.inbox(worker))
            pipe.delete(keys.inbox(worker))
            entries, _ = await pipe.execute()
        if entries:
            log.warning(
                "cluster: serving %d inbox entries lost worker %s never read", len(entries), worker
            )
        for _, fields in entries:
            await self._serve(fields)

    async def _send(self, worker: str, fields: dict[str, str]) -> None:
        await self.node.redis.xadd(
            keys.inbox(worker), fields, maxlen=STREAM_MAXLEN, approximate=True
        )

    async def _request(self, worker: str, fields: dict[str, str]) -> Any:
        reply_key = keys.reply(secrets.token_hex(8))
        await self._send(worker, {**fields, "reply": reply_key})
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                answer = await self.node.blocking.blpop([reply_key], timeout=REQUEST_TIMEOUT)
        except TimeoutError:
            answer = None
        if answer is None:
            raise UnavailableError(f"worker {worker} did not answer in {REQUEST_TIMEOUT:.0f} s")
        return json.loads(answer[1])

    async def _read(self) -> None:
        last = "0-0"
        inbox = keys.inbox(self.node.id)
        while True:
            stop_if_cancelled()  # a hang-up runs the call's own code, not just Redis
            try:
                async with asyncio.timeout(BLOCK_MS / 1000 + 5):
                    batch = await self.node.blocking.xread({inbox: last}, count=100, block=BLOCK_MS)
            except (RedisError, OSError, TimeoutError) as exc:
                self.node.went_down(exc)
                await asyncio.sleep(self.node.tick)
                continue
            for _stream, entries in batch or ():
                for entry_id, fields in entries:
                    last = entry_id
                    await self._serve(fields)
                try:
                    await self.node.redis.xtrim(inbox, minid=last)
                except RedisError:
                    pass  # trimmed next time

    async def _serve(self, fields: dict[str, str]) -> None:
        try:
            if "event" in fields:
                await self._on_event(decode_event(fields["event"]))
            elif fields.get("op") == "hang_up":
                record = await self._on_hang_up(fields["call_id"])
                await self._answer(fields["reply"], record)
            else:
                log.error("cluster: unknown inbox entry %s", sorted(fields))
        except (KeyError, ValueError) as exc:
            log.error("cluster: unreadable inbox entry dropped: %s", exc)
        except RedisError as exc:
            self.node.went_down(exc)

    async def _answer(self, reply_key: str, result: Any) -> None:
        async with self.node.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(reply_key, json.dumps(result))
            pipe.expire(reply_key, 60)
            await pipe.execute()
