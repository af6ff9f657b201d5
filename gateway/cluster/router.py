"""Routing in a cluster: every worker answers for every call.

- A user's new call (a ``connect`` offer) is placed through the new-call stream
  (:mod:`.placement`), so it lands on one worker with room, exactly once. Beyond
  ``GATEWAY_CLUSTER_MAX_CALLS`` live calls it is rejected.
- Every other event (``terminate``, ``status``, the SDP answer of a call we
  placed) and ``DELETE /calls/{id}`` go to the call's owner: handled here when
  this worker owns it, else added to the owner's inbox (:mod:`.inbox`). The
  ``terminate`` that follows a call's end goes to the worker it ended on (whose
  copy of the record, and ``call.ended`` event, wait for it); when that worker is
  gone, into the record in Redis.
- Deduplication is a ``SET NX`` per event, so a delivery Meta retries to another
  worker is handled once.

When Redis cannot be reached, :meth:`deliver` raises UnavailableError (the
webhook gets a 503 and WhatsApp retries it) while calls in progress run on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from redis.exceptions import RedisError

from ..calls import CallManager
from ..errors import CallError, StoreError
from ..events import CallConnect, CallTerminate, Event, PermissionReply, encode_event
from ..records import CallRecord, CallState
from ..routing import LocalRouter, reply_as_dict
from ..store.codec import dedupe_key
from . import keys
from .inbox import Inbox
from .node import WorkerNode
from .placement import Placement

log = logging.getLogger(__name__)

# How long an event for a call not (yet) owned by anyone waits for its owner: a
# status may overtake the placing worker's registration of a call it just placed.
OWNER_WAIT = 2.0


class ClusterRouter:
    """A :class:`gateway.routing.Router` over Redis; see the module docstring."""

    def __init__(
        self,
        node: WorkerNode,
        calls: CallManager,
        *,
        cluster_max_calls: int = 1000,
        answer_timeout: float = 20.0,
    ) -> None:
        self.node = node
        self.calls = calls
        self.local = LocalRouter(calls)
        self.cluster_max_calls = cluster_max_calls
        self.placement = Placement(node, calls, answer_timeout=answer_timeout)
        self.inbox = Inbox(node, on_event=self._dispatch_owned, on_hang_up=self.local.hang_up)
        self.forwarded = 0
        self.rejected_full = 0

    @property
    def redis(self) -> Any:
        """The node's (fail-fast) Redis client."""
        return self.node.redis

    async def start(self) -> None:
        """Join the cluster and start reading new calls and this worker's inbox."""
        self.node.reaper.hooks.append(self.placement.take_over)
        self.node.reaper.hooks.append(self.inbox.take_over)
        await self.node.start()
        await self.placement.start()
        self.inbox.start()

    async def aclose(self) -> None:
        """Leave the cluster."""
        await self.node.aclose()

    def status(self) -> dict[str, Any]:
        """Mode, worker id, Redis state, live calls here."""
        return {
            "mode": "cluster",
            "worker": self.node.id,
            "redis": "up" if self.node.connected else "down",
            "active_calls": len(self.calls.calls),
        }

    def collect(self) -> Iterable[Any]:
        """This worker's cluster figures for ``/metrics`` (a prometheus-client collector)."""
        node = self.node
        yield GaugeMetricFamily(
            "gateway_cluster_redis_up", "1 while this worker reaches Redis", value=node.connected
        )
        for name, help_text, value in (
            ("redis_outages", "Times Redis became unreachable", node.outages),
            ("redis_reconnects", "Times Redis became reachable again", node.reconnects),
            ("forwarded", "Events and requests handed to the owning worker", self.forwarded),
            ("reaped_calls", "Calls of lost workers this worker ended", node.reaper.reaped_calls),
            (
                "ended_elsewhere",
                "Live calls of this worker that another had ended (it was taken for lost)",
                node.ended_elsewhere_calls,
            ),
            ("rejected_full", "Calls refused at the cluster's call limit", self.rejected_full),
        ):
            yield CounterMetricFamily(f"gateway_cluster_{name}", help_text, value=value)

    async def overview(self) -> dict[str, Any]:
        """Every worker's published load and figures, and their sums (``GET /cluster``).

        Each worker publishes at each lease renewal, so figures lag by up to one
        tick (``lease_seconds / 10``). The sums are the cluster's metrics: CPU
        seconds and call seconds add up over worker processes.
        """
        try:
            await self.node.renew()  # this worker's own figures are fresh
            raw = await self.redis.hgetall(keys.WORKERS)
            live = await self.redis.scard(keys.LIVE)
        except RedisError as exc:
            raise self.node.unavailable(exc) from None
        workers = {wid: json.loads(load) for wid, load in sorted(raw.items())}
        total = {
            name: sum(float(w.get(name, 0)) for w in workers.values())
            for name in ("calls", "cpu_seconds", "call_seconds", "rss_bytes")
        }
        return {
            "worker": self.node.id,
            "live_calls": live,
            "cluster_max_calls": self.cluster_max_calls,
            "workers": workers,
            "total": total,
        }

    # --- webhooks ------------------------------------------------------------------

    async def deliver(self, event: Event) -> bool:
        """Handle the event once across the cluster (see the module docstring)."""
        key = dedupe_key(event)
        offer = isinstance(event, CallConnect) and event.sdp_type == "offer"
        call_id = getattr(event, "call_id", None)
        try:
            # One round trip: the dedupe mark, plus what routing the event needs.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(keys.SEEN, {key: time.time()}, nx=True)
                if offer:
                    pipe.scard(keys.LIVE)
                    pipe.hvals(keys.WORKERS)
                elif call_id is not None and call_id not in self.calls.calls:
                    pipe.hget(keys.OWNERS, call_id)
                first, *found = await pipe.execute()
            if not first:
                return False
            await self._route(event, found)
        except RedisError as exc:
            try:  # let WhatsApp's retry be handled, not dropped as a duplicate
                await self.redis.zrem(keys.SEEN, key)
            except RedisError:
                pass
            raise self.node.unavailable(exc) from None
        return True

    async def _route(self, event: Event, found: list[Any]) -> None:
        if isinstance(event, PermissionReply):
            self.calls.dispatch(event)  # saved to the store, which every worker reads
        elif isinstance(event, CallConnect) and event.sdp_type == "offer":
            await self._place(event, live=int(found[0]), loads=found[1])
        elif not found:  # a live call of this worker
            self.calls.dispatch(event)
        else:
            await self._to_owner(event, found[0])

    async def _place(self, event: CallConnect, *, live: int, loads: list[str]) -> None:
        if live >= self.cluster_max_calls:
            self.rejected_full += 1
            self.calls.reject(event.call_id, "capacity", f"cluster at capacity ({live} calls)")
            return
        if not any(_has_room(json.loads(load)) for load in loads):
            self.calls.reject(event.call_id, "capacity", "no worker of the cluster has room")
            return
        await self.placement.offer(event)

    async def _owner(self, call_id: str) -> str | None:
        owner: str | None = await self.redis.hget(keys.OWNERS, call_id)
        return owner

    async def _owner_or_end(self, call_id: str) -> tuple[str | None, bool, str | None]:
        """The call's owner, whether its record says it ended, and the worker it
        ended on (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.OWNERS, call_id)
            pipe.get(keys.record(call_id))
            pipe.get(keys.ended_on(call_id))
            owner, raw, ended_on = await pipe.execute()
        ended = raw is not None and json.loads(raw).get("state") == CallState.ENDED
        return owner, ended, ended_on

    async def _to_owner(self, event: Event, owner: str | None) -> None:
        call_id = getattr(event, "call_id", "")
        deadline = time.monotonic() + OWNER_WAIT
        ended_on = None
        while owner is None and time.monotonic() < deadline:
            # A record that is not ENDED is no sign that no owner is coming: a worker
            # that placed a call saves its record before its owner entry lands.
            owner, ended, ended_on = await self._owner_or_end(call_id)
            if owner is not None or ended:
                break
            await asyncio.sleep(0.05)
            if call_id in self.calls.calls:
                self.calls.dispatch(event)
                return
        if owner is None and isinstance(event, CallTerminate):
            # The call ended on a worker (it hung up) whose copy of the record, and
            # the call.ended event, wait for WhatsApp's terminate record: hand it there.
            owner = ended_on
        if owner == self.node.id:
            await self._dispatch_owned(event)
        elif owner is not None and (
            # Meta's terminate record must not vanish into a dead worker's inbox.
            not isinstance(event, CallTerminate) or await self.redis.exists(keys.lease(owner))
        ):
            self.forwarded += 1
            await self.inbox.send_event(owner, event)
        elif isinstance(event, CallTerminate):
            await self._terminate_unowned(event)
        else:
            self.calls.dispatch(event)  # logged there as an event for an unknown call

    async def _dispatch_owned(self, event: Event) -> None:
        # A terminate for a call of ours that already ended (we hung up): its record
        # in Redis may be written already, so Meta's billing record goes there too.
        live = getattr(event, "call_id", "") in self.calls.calls
        self.calls.dispatch(event)
        if isinstance(event, CallTerminate) and not live:
            await self._terminate_unowned(event)

    async def _terminate_unowned(self, event: CallTerminate) -> None:
        # Meta's terminate is the billing record: keep it on the call's record,
        # or hold it for the worker that takes the call (deliveries can be out of order).
        raw = await self.redis.get(keys.record(event.call_id))
        if raw is None:
            log.info("call %s: terminate before any worker took it; held", event.call_id)
            await self.redis.set(keys.early_terminate(event.call_id), encode_event(event), ex=600)
            return
        record = json.loads(raw)
        record.update(
            terminate_status=event.status,
            duration=event.duration,
            start_time=event.start_time,
            end_time=event.end_time,
            errors=[e.__dict__ for e in event.errors],
        )
        await self.node.records.write(record)

    # --- API ---------------------------------------------------------------------------

    async def admit_new_call(self) -> None:
        """Refuse when this worker drains or the cluster is at its call limit."""
        await self.local.admit_new_call()
        try:
            live = await self.redis.scard(keys.LIVE)
        except RedisError as exc:
            raise self.node.unavailable(exc) from None
        if live >= self.cluster_max_calls:
            self.rejected_full += 1
            raise CallError(f"cluster at capacity ({live} of {self.cluster_max_calls} calls)")

    async def call_record(self, call_id: str) -> dict[str, Any] | None:
        """Live here, else the record in the store (the cluster's Redis: any worker's)."""
        live = self.calls.calls.get(call_id)
        if live is not None:
            return live.record.as_dict()
        try:
            record = await self.calls.store.get_call(call_id)
        except StoreError as exc:
            local = self.calls.history.get(call_id)
            if local is not None:
                return local.as_dict()
            raise self.node.unavailable(exc) from None
        return None if record is None else record.as_dict()

    async def hang_up(self, call_id: str) -> dict[str, Any] | None:
        """Hang up here, or ask the owning worker to."""
        if call_id in self.calls.calls:
            return await self.local.hang_up(call_id)
        try:
            owner = await self._owner(call_id)
            if owner is None or owner == self.node.id:
                return None
            self.forwarded += 1
            result = await self.inbox.request_hang_up(owner, call_id)
        except RedisError as exc:
            raise self.node.unavailable(exc) from None
        return None if result is None else dict(result)

    async def list_calls(self) -> dict[str, list[dict[str, Any]]]:
        """Every live call of the cluster and the store's 100 newest records."""
        try:
            live = sorted(await self.redis.smembers(keys.LIVE))
            raws = await self.redis.mget([keys.record(c) for c in live]) if live else []
            recent = await self.calls.store.recent_calls(100)
        except (RedisError, StoreError) as exc:
            raise self.node.unavailable(exc) from None
        return {
            "active": [CallRecord.from_dict(json.loads(r)).as_dict() for r in raws if r],
            "recent": [r.as_dict() for r in recent],
        }

    async def permission_reply(self, wa_id: str) -> dict[str, Any] | None:
        """The last reply any worker received and saved."""
        try:
            reply = await self.calls.store.permission_reply(wa_id)
        except StoreError as exc:
            raise self.node.unavailable(exc) from None
        return None if reply is None else reply_as_dict(reply)


def _has_room(load: dict[str, Any]) -> bool:
    return not load.get("draining") and int(load.get("calls", 0)) < int(load.get("max", 0))
