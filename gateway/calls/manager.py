"""The call manager: routes the Cloud API's call events to the calls, one per call id.

It owns every call, holds them within the configured limit, and routes the
webhook events its inbox (:mod:`.inbox`) hands it one at a time, leaving slow
work to tasks the call concerned owns. How a call is answered (:mod:`.answer`)
or placed (:mod:`.dial`), what runs beside it (:mod:`.active`), what is kept of
it (:mod:`.ledger`), what a successor does after a crash (:mod:`.recovery`)
and the events that come before their call (:mod:`.early`) live beside this
module. One call's state machine is :class:`gateway.call.Call`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from ..call import Call, CallObserver, SessionFactory
from ..errors import CallError, GatewayError
from ..events import (
    CallConnect,
    CallStatus,
    CallTerminate,
    Direction,
    Event,
    PermissionReply,
)
from ..graph import GraphClient
from ..logsafe import clip
from ..media.opus import DEFAULT_COMPLEXITY
from ..records import CallRecord, CallState
from ..store import JournalEntry, MemoryStore, Store
from .active import run_session, watch_media
from .answer import answer_call, send_reject
from .dial import apply_answer, dial, ring
from .early import EarlyEvents
from .inbox import Inbox
from .ledger import CallLedger
from .recovery import recover

__all__ = ["CallManager"]

# The calls' logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.calls")


class CallManager:
    """Routes webhook events to calls, enforces the call limit, owns every call.

    ``dispatch`` is the webhook receiver's sink: it only queues journaled events. One
    worker task handles them in arrival order and marks each handled in the store;
    slow work (answering, Graph requests) runs in tasks owned by the call it concerns.
    Records go to the store before the Cloud API hears of a call, so a successor
    process can end the calls of one that died (see :meth:`recover`).
    """

    def __init__(
        self,
        graph: GraphClient,
        *,
        max_calls: int = 100,
        answer_timeout: float = 20.0,
        session: SessionFactory | None = None,
        history_size: int = 1000,
        ring_timeout: float = 45.0,
        media_timeout: float = 10.0,
        media_idle_timeout: float = 20.0,
        store: Store | None = None,
        opus_complexity: int = DEFAULT_COMPLEXITY,
    ) -> None:
        self.graph = graph
        # The encoder effort of every call's outbound speech (Settings.opus_complexity).
        self.opus_complexity = opus_complexity
        self.ledger = CallLedger(store if store is not None else MemoryStore(), history_size)
        self.max_calls = max_calls
        self.answer_timeout = answer_timeout
        # Seconds from accept (or the user's answer) until media must be up; then
        # seconds without one inbound RTP packet before the call is given up.
        self.media_timeout = media_timeout
        self.media_idle_timeout = media_idle_timeout
        self.session = session
        self.calls: dict[str, Call] = {}
        # Terminates before their connect; events before our connect returned the id.
        self.early = EarlyEvents()
        self.inbox = Inbox(self._handle, self.ledger.mark_handled)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.permission_replies: dict[str, PermissionReply] = {}
        self.rejected_for_capacity = 0
        self._dialing = 0
        self.ring_timeout = ring_timeout
        self.observers: list[CallObserver] = []
        # False while draining: new calls are refused, live ones run on.
        self.accepting = True
        self._released = asyncio.Event()  # set whenever a call leaves

    @property
    def store(self) -> Store:
        """Where the call records and the event journal are kept."""
        return self.ledger.store

    @property
    def history(self) -> OrderedDict[str, CallRecord]:
        """The records of the most recent ended calls, oldest first."""
        return self.ledger.history

    @property
    def load(self) -> int:
        """Calls this manager holds, counting those still being dialed."""
        return len(self.calls) + self._dialing

    @property
    def has_room(self) -> bool:
        """Whether a new call would be taken now."""
        return self.accepting and self.load < self.max_calls

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> list[CallRecord]:
        """Recover what a dead predecessor left in the store, then start the event worker.

        Returns the records of the calls it left live, ended now (see :meth:`recover`).
        """
        if self.inbox.started:
            return []
        orphans = await self.recover()
        self.inbox.start()
        return orphans

    async def recover(self) -> list[CallRecord]:
        """End the calls a dead process left live, and queue the events it never handled.

        Returns the records of the calls ended this way (see :mod:`.recovery`).
        """
        return await recover(self.ledger, self.graph, self._spawn, self.dispatch)

    async def aclose(self) -> None:
        """End every call (telling the Cloud API) and stop the worker."""
        await asyncio.gather(
            *(c.end("gateway shutting down", terminate=True) for c in list(self.calls.values())),
            return_exceptions=True,
        )
        for task in self._tasks:
            task.cancel()
        self.inbox.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.inbox.stopped()
        await self.flush()

    async def flush(self) -> None:
        """Wait until every record write started so far is done."""
        await self.ledger.flush()

    def dispatch(self, item: JournalEntry | Event) -> None:
        """Queue an event (the webhook receiver's sink; never blocks).

        A journal entry is marked handled in the store once handled; a bare event
        (from a test, or a caller without a journal) is just handled.
        """
        self.inbox.put(item)

    async def drain(self) -> None:
        """Wait until every queued event was handled (for tests and shutdown)."""
        await self.inbox.join()

    def _observe(self, notify: Callable[[CallObserver], None]) -> None:
        for observer in self.observers:
            try:
                notify(observer)
            except Exception:  # observing a call must never break it
                log.exception("call observer %s failed", type(observer).__name__)

    async def wait_idle(self) -> None:
        """Return once no call is left (a draining gateway waits on this)."""
        while self.calls or self._dialing:
            self._released.clear()
            await self._released.wait()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- routing ---------------------------------------------------------------

    async def _handle(self, event: Event) -> None:
        if isinstance(event, CallConnect):
            await self._on_connect(event)
        elif isinstance(event, CallTerminate):
            await self._on_terminate(event)
        elif isinstance(event, CallStatus):
            await self._on_status(event)
        else:
            log.info(
                "permission reply from %s: %s%s",
                clip(event.from_),
                "accepted" if event.accepted else "declined",
                " (permanent)" if event.permanent else "",
            )
            self.permission_replies[event.from_] = event
            await self.store.save_permission_reply(event)

    async def _on_connect(self, event: CallConnect) -> None:
        if event.sdp_type == "answer":
            self._on_connect_answer(event)
            return
        record = self.early.ended_before_connect(event)
        if record is not None:
            self.ledger.remember(record)
            self.ledger.persist(record)
            return
        if event.call_id in self.calls:
            log.warning("call %s: second offer for a known call ignored", event.call_id)
            return
        if not self.accepting:
            self.reject(event.call_id, "draining")
            return
        if len(self.calls) >= self.max_calls:
            self.reject(event.call_id, "capacity", f"at capacity ({self.max_calls} calls)")
            return
        record = CallRecord(
            call_id=event.call_id,
            direction=event.direction,
            peer=event.from_,
            contact_name=event.contact.name if event.contact else None,
            biz_opaque_callback_data=event.biz_opaque_callback_data,
        )
        call = Call(
            record,
            graph=self.graph,
            on_ended=self._ended,
            opus_complexity=self.opus_complexity,
        )
        self.calls[call.id] = call
        self._observe(lambda o: o.call_started(call))
        # On disk before Meta hears from us: if this process dies, a successor ends it.
        await self.ledger.save(record)
        call.spawn(self._answer(call, event.sdp), "answer")

    def _on_connect_answer(self, event: CallConnect) -> None:
        call = self.calls.get(event.call_id)
        if call is None:
            if self._dialing:
                self.early.hold(event)
            else:
                log.warning("call %s: SDP answer for an unknown call ignored", event.call_id)
            return
        call.spawn(self._apply_answer(call, event.sdp), "apply-answer")

    # --- business-initiated calls ------------------------------------------------

    async def place_call(
        self,
        to: str,
        *,
        biz_opaque_callback_data: str | None = None,
        ring_timeout: float | None = None,
        session: SessionFactory | None = None,
    ) -> Call:
        """Call WhatsApp user ``to``; returns once the Cloud API gave the call an id.

        Raises GraphAPIError (e.g. 138006: no permission) or CallError at capacity.
        The call then rings; it becomes ACTIVE when the user answers, and ends by
        itself after ``ring_timeout`` seconds unanswered.
        """
        if not self.accepting:
            raise CallError("gateway draining: not placing new calls")
        if self.load >= self.max_calls:
            raise CallError(f"at capacity ({self.max_calls} calls)")
        if biz_opaque_callback_data is not None and len(biz_opaque_callback_data) > 512:
            raise GatewayError(
                f"biz_opaque_callback_data is {len(biz_opaque_callback_data)} characters;"
                " the Cloud API allows at most 512"
            )
        record = CallRecord(
            call_id="(dialing)",
            direction=Direction.BUSINESS_INITIATED,
            peer=to,
            biz_opaque_callback_data=biz_opaque_callback_data,
        )
        call = Call(
            record,
            graph=self.graph,
            on_ended=self._ended,
            opus_complexity=self.opus_complexity,
        )
        call.session_factory = session
        self._dialing += 1
        try:
            call_id = await dial(call, self.graph, to, biz_opaque_callback_data)
        finally:
            self._dialing -= 1
            self._released.set()
        record.call_id = call_id
        self.calls[call_id] = call
        call.set_state(CallState.DIALING, f"connect sent to {to}")
        self._observe(lambda o: o.call_started(call))
        await self.ledger.save(record)
        call.spawn(ring(call, ring_timeout or self.ring_timeout), "ring")
        for early in self.early.release(call_id):
            await self._handle(early)
        return call

    async def _on_terminate(self, event: CallTerminate) -> None:
        call = self.calls.get(event.call_id)
        record = call.record if call is not None else self.history.get(event.call_id)
        if record is None:
            # A call of an earlier process (e.g. one ended at start-up after a crash).
            record = await self.store.get_call(event.call_id)
        if record is None:
            self.early.terminated(event)
            return
        # Meta's terminate is the billing record: keep it even for calls we ended.
        record.terminate_status = event.status
        record.duration = event.duration
        record.start_time, record.end_time = event.start_time, event.end_time
        record.errors = [e.__dict__ for e in event.errors]
        if event.biz_opaque_callback_data:
            record.biz_opaque_callback_data = event.biz_opaque_callback_data
        if call is not None:
            call.end(f"terminated by WhatsApp ({clip(event.status.lower(), 40)})", terminate=False)
        else:
            await self.ledger.save(record)

    async def _on_status(self, event: CallStatus) -> None:
        # Every status WhatsApp reports goes into the call's record and is saved now,
        # whenever it comes: before the answer, after it, or after the call ended.
        call = self.calls.get(event.call_id)
        if call is None:
            record = await self.ledger.ended_record(event.call_id)
            if record is not None:
                record.statuses.append(event.status)
                await self.ledger.save(record)
            elif self._dialing:
                self.early.hold(event)
            else:
                log.info(
                    "call %s: status %s for an unknown call", event.call_id, clip(event.status, 40)
                )
            return
        call.record.statuses.append(event.status)
        if event.status == "RINGING" and call.state is CallState.DIALING:
            call.set_state(CallState.RINGING, "user's phone rings")
        elif event.status == "REJECTED":
            call.end("rejected by the user", terminate=False)
        # ACCEPTED may come after the answer and media: nothing to change then.
        self.ledger.persist(call.record)

    # --- actions ---------------------------------------------------------------

    def reject(self, call_id: str, reason: str, detail: str = "") -> None:
        """Refuse a user's call through the Cloud API (``reason``: capacity, draining)."""
        if reason == "capacity":
            self.rejected_for_capacity += 1
        log.warning("call %s: rejected, %s", call_id, detail or reason)
        self._observe(lambda o: o.call_refused(call_id, reason))
        self._spawn(send_reject(self.graph, call_id), f"{call_id}:reject")

    # --- answered calls ----------------------------------------------------------

    async def _answer(self, call: Call, offer: str) -> None:
        if not await answer_call(call, offer, self.graph, self.answer_timeout):
            return
        self._activate(call, "accepted")
        self._start_session(call)

    async def _apply_answer(self, call: Call, answer: str) -> None:
        if not await apply_answer(call, answer):
            return
        self._activate(call, "user answered")
        await call.media_up.wait()  # or the watchdog ends the call (and cancels this)
        self._start_session(call)

    def _activate(self, call: Call, reason: str) -> None:
        # An answered call, either way: ACTIVE, told, saved, and its media watched.
        call.record.accepted_at = time.time()
        call.set_state(CallState.ACTIVE, reason)
        self._observe(lambda o: o.call_answered(call))
        self.ledger.persist(call.record)
        call.spawn(watch_media(call, self.media_timeout, self.media_idle_timeout), "media-watch")

    def _start_session(self, call: Call) -> None:
        factory = call.session_factory or self.session
        if factory:
            call.spawn(run_session(call, factory), "session")

    # --- bookkeeping -------------------------------------------------------------

    def _ended(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        self.ledger.remember(call.record)
        self._observe(lambda o: o.call_ended(call))
        self._released.set()
        self.ledger.persist(call.record)

    def get(self, call_id: str) -> Call:
        """The live call with this id, or CallError."""
        try:
            return self.calls[call_id]
        except KeyError:
            raise CallError(f"no active call {call_id}") from None
