"""Events to the business backend (``GATEWAY_EVENTS_URL``), from a durable outbox.

For every call the backend gets ``call.started``, ``call.answered`` (if it was)
and ``call.ended``: one ``POST`` of JSON each, with a ``type``, an ``id`` and the
call record. The ``id`` is the same for the same event of the same call, whoever
sends it (:func:`event_id`): a delivery may be repeated, never lost, and in a
cluster a call's ``call.ended`` may come from the worker that ran it and from the
worker that took it for lost (:mod:`gateway.cluster.reaper`), and a single process
restarted after a crash sends it for the calls the dead one left live
(:mod:`gateway.calls.recovery`); the backend keeps the first of each ``id``.
``call.ended`` carries the whole record: WhatsApp's terminate record (status,
billed duration, start and end time, errors, ``biz_opaque_callback_data``), the
end reason, the recording's path, and the conversation transcript when the bot
kept one. It waits up to ``terminate_wait`` seconds for WhatsApp's terminate
webhook when the gateway ended the call itself; meanwhile it is stored as it is,
due after twice that wait, and the one sent after the wait replaces it: a process
that dies while it waits loses nothing.

Each body is signed as Meta signs its webhooks:
``X-Gateway-Signature-256: sha256=<HMAC-SHA256 of the body, GATEWAY_EVENTS_SECRET>``.

An event is first written to the store's outbox (durable before anything is
sent), then delivered by one task: a 2xx removes it; anything else (or no
answer within 10 s) is retried with exponential backoff (1 s doubling to 5 min,
jittered) until ``max_age`` (default 1 h) has passed since the event, then it is
dropped, counted and logged. Nothing here ever waits in a call's path: the call
observer only queues.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from .aiohttp_transport import AiohttpTransport
from .logsafe import clip
from .shutdown import stop_if_cancelled
from .store import OutboxEvent, Store

if TYPE_CHECKING:
    from .calls import Call, CallRecord

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Gateway-Signature-256"
EVENT_TYPES: Final = ("call.started", "call.answered", "call.ended")
BASE_DELAY: Final = 1.0
MAX_DELAY: Final = 300.0
BATCH: Final = 50
# How often a call.ended waiting for WhatsApp's terminate record looks for it.
TERMINATE_POLL: Final = 0.2


def sign(body: bytes, secret: str) -> str:
    """The ``X-Gateway-Signature-256`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def call_payload(record: CallRecord) -> dict[str, Any]:
    """The record as events carry it (``transcript``: the bot's conversation, if any)."""
    payload = record.as_dict()
    turns = payload.pop("conversation", None)
    payload["transcript"] = turns if turns else None
    return payload


# Names the event ids (uuid5): any fixed UUID would do, it must only never change.
EVENT_ID_NAMESPACE: Final = uuid.UUID("5a1c3f0e-8d47-4c5b-9f2e-3b6a7d1e0c94")


def event_id(kind: str, call_id: str) -> str:
    """The id of the ``kind`` event of call ``call_id``: derived from both, so every
    worker that sends it (its owner, or the reaper of a lost owner) gives it the
    same one, and the backend can keep one of each."""
    return f"evt_{uuid.uuid5(EVENT_ID_NAMESPACE, f'{kind}/{call_id}').hex}"


def make_event(kind: str, record: CallRecord, *, now: float | None = None) -> OutboxEvent:
    """The event of ``kind`` about ``record`` (its id: :func:`event_id`)."""
    created = time.time() if now is None else now
    ident = event_id(kind, record.call_id)
    body = json.dumps(
        {"id": ident, "type": kind, "created_at": created, "call": call_payload(record)},
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    ).encode()
    return OutboxEvent(ident, kind, body, created, 0, created)


class EventOutbox:
    """Turns call events into outbox rows and delivers them; a call observer."""

    def __init__(
        self,
        store: Store,
        *,
        url: str,
        secret: str,
        max_age: float = 3600.0,
        terminate_wait: float = 10.0,
        timeout: float = 10.0,
        registry: CollectorRegistry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.url = url
        self._secret = secret
        self.max_age = max_age
        self.terminate_wait = terminate_wait
        # aiohttp under httpx's API, as the Graph client's: its C parser, and no anyio
        # backend for the process to import and keep (gateway/warmup.py).
        self._client = httpx.AsyncClient(
            timeout=timeout, transport=transport if transport is not None else AiohttpTransport()
        )
        self._wake = asyncio.Event()
        self._writes: asyncio.Queue[OutboxEvent] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiting: dict[str, asyncio.Task[None]] = {}
        # Ids of call.ended events stored ahead of WhatsApp's terminate record.
        self._held: set[str] = set()
        self._runner: list[asyncio.Task[None]] = []
        self.deliveries = Counter(
            "gateway_events",
            "Events to the business backend by type and outcome (delivered, undeliverable)",
            ["type", "outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            "gateway_event_delivery_attempts",
            "POSTs of events to the backend, by HTTP status (or error)",
            ["status"],
            registry=registry,
        )
        self.pending = Gauge(
            "gateway_events_pending",
            "Events in the outbox not delivered yet",
            registry=registry,
        )
        for kind in EVENT_TYPES:
            for outcome in ("delivered", "undeliverable"):
                self.deliveries.labels(kind, outcome)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer and the deliverer (events left from a previous run go too)."""
        if not self._runner:
            # Events queued before the start (the call.ended of calls a dead process left
            # live) replace, under the same id, what that process stored: before any
            # delivery, so that the backend never sees the version they replace.
            await self._flush_writes()
            left = await self.store.outbox_due(float("inf"), 1_000_000)
            self.pending.set(len(left))
            if left:
                log.info("%d undelivered event(s) from before the restart", len(left))
            self._runner = [
                asyncio.create_task(self._write_forever(), name="outbox-write"),
                asyncio.create_task(self._deliver_forever(), name="outbox-deliver"),
            ]

    async def aclose(self) -> None:
        """Queue the call.ended events still waiting for WhatsApp's terminate record, write
        everything queued to the store, and stop (undelivered events stay in the outbox)."""
        for task in list(self._waiting.values()):
            task.cancel()
        await asyncio.gather(*self._waiting.values(), return_exceptions=True)
        await self._flush_writes()
        for task in [*self._runner, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._runner, *self._tasks, return_exceptions=True)
        self._runner = []
        await self._client.aclose()

    # --- CallObserver ------------------------------------------------------------------

    def publish(self, kind: str, record: CallRecord) -> OutboxEvent:
        """Queue an event of ``kind`` about ``record`` (written to the outbox, then sent)."""
        event = make_event(kind, record)
        self._queue(event)
        return event

    async def add(self, kind: str, record: CallRecord) -> OutboxEvent:
        """Write an event of ``kind`` about ``record`` to the outbox now, then send it.

        For who must know it is stored before going on (the cluster's reaper);
        raises the store's error (:class:`gateway.errors.StoreError`) if it is not.
        """
        event = make_event(kind, record)
        await self._store(event)
        return event

    def took_over(self, count: int) -> None:
        """Note ``count`` events that another (lost) worker's outbox handed to this
        outbox's store, and send them."""
        if count:
            self.pending.inc(count)
            self._wake.set()

    def call_started(self, call: Call) -> None:
        self.publish("call.started", call.record)

    def call_answered(self, call: Call) -> None:
        self.publish("call.answered", call.record)

    def call_refused(self, call_id: str, reason: str) -> None:
        pass

    def call_ended(self, call: Call) -> None:
        self.ended(call.record)

    def ended(self, record: CallRecord) -> None:
        """Queue the ``call.ended`` of ``record``: at once if WhatsApp's terminate record
        is on it, else once it is or after ``terminate_wait``.

        For a call that ended here, or that a dead process left live (ended at
        start-up, :mod:`gateway.calls.recovery`): ``record`` is the one the call
        manager fills in when the terminate webhook comes.
        """
        if record.terminate_status is not None or self.terminate_wait <= 0:
            self.publish("call.ended", record)
            return
        # Stored now, as the record is, and due only after twice the wait: the event
        # sent after the wait (same id) replaces it. A process that dies meanwhile
        # leaves it in the outbox: a restart, or a cluster's reaper, delivers it.
        held = make_event("call.ended", record)
        self._held.add(held.id)
        self._queue(replace(held, next_attempt_at=held.created_at + 2 * self.terminate_wait))
        call_id = record.call_id
        task = asyncio.create_task(self._end_after_terminate(record), name=f"{call_id}:event")
        self._waiting[call_id] = task
        task.add_done_callback(lambda _: self._waiting.pop(call_id, None))

    async def _end_after_terminate(self, record: CallRecord) -> None:
        # WhatsApp's terminate webhook (the billing record) follows our own terminate.
        try:
            await self.with_terminate_record(record)
        finally:
            self.publish("call.ended", record)

    async def with_terminate_record(
        self,
        record: CallRecord,
        reread: Callable[[], Awaitable[CallRecord | None]] | None = None,
    ) -> CallRecord:
        """``record`` once WhatsApp's terminate record (its billing record) is on it, or
        as it is after ``terminate_wait``: what every ``call.ended`` of a call the
        gateway ended itself waits for (its owner's, a restarted process's, a
        cluster reaper's).

        Without ``reread``, ``record`` is one the call manager fills in when the
        terminate webhook comes; ``reread`` fetches it again (from another process's
        store). A 0.2 s look for a few seconds per ended call costs less than another
        hook in every call's path.
        """
        try:
            async with asyncio.timeout(self.terminate_wait):
                while record.terminate_status is None:
                    await asyncio.sleep(TERMINATE_POLL)
                    if reread is not None:
                        record = await reread() or record
        except TimeoutError:
            log.info("call %s: no terminate record from WhatsApp", record.call_id)
        return record

    # --- writing and delivering ----------------------------------------------------------

    def _queue(self, event: OutboxEvent) -> None:
        self._writes.put_nowait(event)

    async def _write_forever(self) -> None:
        while True:
            event = await self._writes.get()
            await self._write(event)

    async def _flush_writes(self) -> None:
        while not self._writes.empty():
            await self._write(self._writes.get_nowait())

    async def _write(self, event: OutboxEvent) -> None:
        try:
            await self._store(event)
        except Exception as exc:
            self.deliveries.labels(event.type, "undeliverable").inc()
            log.error("event %s (%s) could not be stored: %r", event.id, event.type, exc)

    async def _store(self, event: OutboxEvent) -> None:
        """Keep ``event`` in the outbox and wake the delivery; raises the store's error."""
        await self.store.outbox_add(event)
        if event.id in self._held and event.next_attempt_at <= event.created_at:
            self._held.discard(event.id)  # it replaced the one held for it
        else:
            self.pending.inc()
        self._wake.set()

    async def _deliver_forever(self) -> None:
        while True:
            stop_if_cancelled()  # the store and the HTTP client are libraries
            self._wake.clear()
            try:
                due = await self.store.outbox_due(time.time(), BATCH)
                for event in due:
                    await self._attempt(event)
                if len(due) == BATCH:
                    continue
                next_due = await self.store.outbox_next_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event delivery loop failed; retrying in 5 s")
                next_due = time.time() + 5
            delay = 3600.0 if next_due is None else max(0.0, next_due - time.time())
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _attempt(self, event: OutboxEvent) -> None:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(event.body, self._secret),
            "X-Gateway-Event-Id": event.id,
            "X-Gateway-Event-Type": event.type,
        }
        try:
            response = await self._client.post(self.url, content=event.body, headers=headers)
            status, problem = str(response.status_code), f"HTTP {response.status_code}"
            delivered = response.is_success
        except httpx.HTTPError as exc:
            status, problem, delivered = "error", clip(exc), False
        self.attempts.labels(status).inc()
        if delivered:
            await self.store.outbox_remove(event.id)
            self.pending.dec()
            self.deliveries.labels(event.type, "delivered").inc()
            return
        attempts = event.attempts + 1
        now = time.time()
        delay = min(MAX_DELAY, BASE_DELAY * 2 ** (attempts - 1)) * (0.5 + random.random() / 2)
        if now + delay - event.created_at > self.max_age:
            await self.store.outbox_remove(event.id)
            self.pending.dec()
            self.deliveries.labels(event.type, "undeliverable").inc()
            log.warning(
                "event %s (%s) undeliverable after %d attempts over %.0f s: %s",
                event.id,
                event.type,
                attempts,
                now - event.created_at,
                problem,
            )
            return
        log.info(
            "event %s (%s) not delivered (%s); retry %d in %.1f s",
            event.id,
            event.type,
            problem,
            attempts,
            delay,
        )
        await self.store.outbox_retry(event.id, attempts, now + delay)
