"""The call manager: routes the Cloud API's call events to the calls, one per call id.

It answers or places calls, holds them within the configured limit, keeps their
records in the store, recovers the records of calls a dead process left live, and
tells observers (metrics, recordings, events) about each call's life. One call's
state machine is :class:`gateway.call.Call`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCSessionDescription

from . import sdp
from .call import Call, CallObserver, SessionFactory
from .errors import CallError, GatewayError, GraphAPIError, SDPError, StoreError
from .events import (
    CallConnect,
    CallStatus,
    CallTerminate,
    Direction,
    Event,
    PermissionReply,
)
from .graph import GraphClient
from .logsafe import clip
from .media.opus import DEFAULT_COMPLEXITY
from .records import CallRecord, CallState
from .store import JournalEntry, MemoryStore, Store

__all__ = [
    "RESTART_END_REASON",
    "Call",
    "CallManager",
    "CallObserver",
    "CallRecord",
    "CallState",
    "SessionFactory",
]

log = logging.getLogger(__name__)


# The end reason of calls that were live in a process that died.
RESTART_END_REASON = "gateway restarted: the call was live in a process that died"


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
        self.store: Store = store if store is not None else MemoryStore()
        self.max_calls = max_calls
        self.answer_timeout = answer_timeout
        # Seconds from accept (or the user's answer) until media must be up; then
        # seconds without one inbound RTP packet before the call is given up.
        self.media_timeout = media_timeout
        self.media_idle_timeout = media_idle_timeout
        self.session = session
        self.calls: dict[str, Call] = {}
        self.history: OrderedDict[str, CallRecord] = OrderedDict()
        self._history_size = history_size
        # Terminates that came before their connect (deliveries can be out of order).
        self._ended_early: OrderedDict[str, CallTerminate] = OrderedDict()
        self._queue: asyncio.Queue[JournalEntry | Event] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Record writes in flight: awaited (never cancelled) on shutdown.
        self._writes: set[asyncio.Task[None]] = set()
        self.permission_replies: dict[str, PermissionReply] = {}
        self.rejected_for_capacity = 0
        # Events that arrived before our connect request returned the call id.
        self._early: OrderedDict[str, list[CallConnect | CallStatus]] = OrderedDict()
        self._dialing = 0
        self.ring_timeout = ring_timeout
        self.observers: list[CallObserver] = []
        # False while draining: new calls are refused, live ones run on.
        self.accepting = True
        self._released = asyncio.Event()  # set whenever a call leaves

    @property
    def load(self) -> int:
        """Calls this manager holds, counting those still being dialed."""
        return len(self.calls) + self._dialing

    @property
    def has_room(self) -> bool:
        """Whether a new call would be taken now."""
        return self.accepting and self.load < self.max_calls

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a dead predecessor left in the store, then start the event worker."""
        if self._worker is None:
            await self.recover()
            self._worker = asyncio.create_task(self._run(), name="call-manager")

    async def recover(self) -> list[CallRecord]:
        """End the calls a dead process left live, and queue the events it never handled.

        A call cannot move to another process (its ICE and DTLS state died with the
        old one), so each is recorded as ended now and ``terminate`` goes to the Cloud
        API in the background; WhatsApp's terminate webhook completes the record later.
        Returns the records of the calls ended this way.
        """
        orphans = await self.store.live_calls()
        for record in orphans:
            was = record.state
            record.state = CallState.ENDED
            record.ended_at = time.time()
            record.end_reason = RESTART_END_REASON
            await self._save(record)
            log.warning("call %s: was %s in a process that died; ending it", record.call_id, was)
            self._spawn(self._end_orphan(record, was), f"{record.call_id}:end-orphan")
        replayed = 0
        for entry in await self.store.unhandled():
            event = entry.event
            if isinstance(event, CallConnect) and event.sdp_type == "offer":
                if await self.store.get_call(event.call_id) is not None:
                    # The dead process had taken the call: it is one of the orphans.
                    await self._mark_handled(entry)
                    continue
            replayed += 1
            self.dispatch(entry)
        if orphans or replayed:
            log.warning(
                "recovered after a restart: %d live call(s) ended, %d unhandled event(s) queued",
                len(orphans),
                replayed,
            )
        return orphans

    async def _end_orphan(self, record: CallRecord, was: CallState) -> None:
        try:
            await self.graph.terminate(record.call_id)
            return
        except GraphAPIError as exc:
            if not (was is CallState.NEW and record.direction is Direction.USER_INITIATED):
                log.warning("call %s: terminate after restart failed: %s", record.call_id, exc)
                return
        # Never answered: Meta may want a reject instead.
        await self._reject(record.call_id)

    async def aclose(self) -> None:
        """End every call (telling the Cloud API) and stop the worker."""
        await asyncio.gather(
            *(c.end("gateway shutting down", terminate=True) for c in list(self.calls.values())),
            return_exceptions=True,
        )
        for task in [*self._tasks, *([self._worker] if self._worker else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        await self.flush()

    async def flush(self) -> None:
        """Wait until every record write started so far is done."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def dispatch(self, item: JournalEntry | Event) -> None:
        """Queue an event (the webhook receiver's sink; never blocks).

        A journal entry is marked handled in the store once handled; a bare event
        (from a test, or a caller without a journal) is just handled.
        """
        self._queue.put_nowait(item)

    async def drain(self) -> None:
        """Wait until every queued event was handled (for tests and shutdown)."""
        await self._queue.join()

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

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            entry, event = (item, item.event) if isinstance(item, JournalEntry) else (None, item)
            try:
                try:
                    await self._handle(event)
                except Exception:  # one bad event must not stop the others
                    log.exception("error handling %s", clip(event))
                if entry is not None:
                    # Also after an error: replaying it after a restart would fail again.
                    await self._mark_handled(entry)
            finally:
                self._queue.task_done()

    async def _mark_handled(self, entry: JournalEntry) -> None:
        try:
            await self.store.mark_handled(entry.id)
        except Exception as exc:
            log.error("event %s handled but not marked so: %s", entry.id, clip(exc))

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
        early = self._ended_early.pop(event.call_id, None)
        if early is not None:
            log.info("call %s: connect arrived after its terminate; not answering", event.call_id)
            record = self._record_for(event, early)
            self._remember(record)
            self._persist(record)
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
        await self._save(record)
        call.spawn(self._answer(call, event.sdp), "answer")

    def _on_connect_answer(self, event: CallConnect) -> None:
        call = self.calls.get(event.call_id)
        if call is None:
            if self._dialing:
                self._hold(event)
            else:
                log.warning("call %s: SDP answer for an unknown call ignored", event.call_id)
            return
        call.spawn(self._apply_answer(call, event.sdp), "apply-answer")

    async def _apply_answer(self, call: Call, answer: str) -> None:
        if call.state not in (CallState.DIALING, CallState.RINGING):
            log.warning("call %s: SDP answer in state %s ignored", call.id, call.state)
            return
        try:
            await call.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except ValueError as exc:
            log.warning("call %s: bad SDP answer: %s", call.id, clip(exc))
            call.end("bad SDP answer", terminate=True)
            return
        call.remote_sdp = answer
        call.use_payload_types(answer)
        call.playout.bitrate = sdp.opus_bitrate(answer)
        call.record.accepted_at = time.time()
        call.set_state(CallState.ACTIVE, "user answered")
        self._observe(lambda o: o.call_answered(call))
        self._persist(call.record)
        call.spawn(self._watch_media(call), "media-watch")
        await call.media_up.wait()  # or the watchdog ends the call (and cancels this)
        if call.session_factory or self.session:
            call.spawn(self._run_session(call), "session")

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
            offer = await call.build_offer()
            call_id = await self.graph.connect(
                to, offer, biz_opaque_callback_data=biz_opaque_callback_data
            )
        except BaseException:
            if call.inbound is not None:
                call.inbound.detach()
            await call.pc.close()
            raise
        finally:
            self._dialing -= 1
            self._released.set()
        record.call_id = call_id
        self.calls[call_id] = call
        call.set_state(CallState.DIALING, f"connect sent to {to}")
        self._observe(lambda o: o.call_started(call))
        await self._save(record)
        call.spawn(self._ring(call, ring_timeout or self.ring_timeout), "ring")
        for early in self._early.pop(call_id, []):
            await self._handle(early)
        return call

    async def _ring(self, call: Call, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                while call.state in (CallState.DIALING, CallState.RINGING):
                    await call.state_changed.wait()
                    call.state_changed.clear()
        except TimeoutError:
            log.info("call %s: not answered within %.0f s", call.id, seconds)
            call.end(f"not answered within {seconds:.0f} s", terminate=True)

    async def _on_terminate(self, event: CallTerminate) -> None:
        call = self.calls.get(event.call_id)
        record = call.record if call is not None else self.history.get(event.call_id)
        if record is None:
            # A call of an earlier process (e.g. one ended at start-up after a crash).
            record = await self.store.get_call(event.call_id)
        if record is None:
            log.info("call %s: terminate before connect; remembered", event.call_id)
            self._ended_early[event.call_id] = event
            while len(self._ended_early) > 10_000:
                self._ended_early.popitem(last=False)
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
            await self._save(record)

    async def _on_status(self, event: CallStatus) -> None:
        # Every status WhatsApp reports goes into the call's record and is saved now,
        # whenever it comes: before the answer, after it, or after the call ended.
        call = self.calls.get(event.call_id)
        if call is None:
            record = await self._ended_record(event.call_id)
            if record is not None:
                record.statuses.append(event.status)
                await self._save(record)
            elif self._dialing:
                self._hold(event)
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
        self._persist(call.record)

    async def _ended_record(self, call_id: str) -> CallRecord | None:
        """The record of a call that ended (here or in an earlier process), else None.

        A record that is not ENDED belongs to a call live in another process (a
        cluster's worker): only that process writes it.
        """
        record = self.history.get(call_id)
        if record is None:
            try:
                record = await self.store.get_call(call_id)
            except StoreError as exc:
                log.error("call %s: record not read: %s", clip(call_id), clip(exc))
        return record if record is not None and record.state is CallState.ENDED else None

    def _hold(self, event: CallConnect | CallStatus) -> None:
        # Meta may report on a call before our connect request has returned its id.
        log.info("call %s: %s before the call is known; held", event.call_id, type(event).__name__)
        self._early.setdefault(event.call_id, []).append(event)
        while len(self._early) > 1000:
            self._early.popitem(last=False)

    # --- actions ---------------------------------------------------------------

    def reject(self, call_id: str, reason: str, detail: str = "") -> None:
        """Refuse a user's call through the Cloud API (``reason``: capacity, draining)."""
        if reason == "capacity":
            self.rejected_for_capacity += 1
        log.warning("call %s: rejected, %s", call_id, detail or reason)
        self._observe(lambda o: o.call_refused(call_id, reason))
        self._spawn(self._reject(call_id), f"{call_id}:reject")

    async def _reject(self, call_id: str) -> None:
        try:
            await self.graph.reject(call_id)
        except GraphAPIError as exc:
            log.warning("call %s: reject failed: %s", call_id, clip(exc))
        except Exception as exc:
            log.error("call %s: reject could not be sent: %s", call_id, clip(exc), exc_info=exc)

    async def _answer(self, call: Call, offer: str) -> None:
        try:
            async with asyncio.timeout(self.answer_timeout):
                answer = await call.build_answer(offer)
                await self.graph.pre_accept(call.id, answer)
                call.set_state(CallState.PRE_ACCEPTED, "answer sent")
                # Meta requires the accept SDP to be byte-identical to pre_accept's.
                await self.graph.accept(call.id, answer)
        except SDPError as exc:
            log.warning("call %s: cannot answer: %s", call.id, clip(exc))
            await self._reject(call.id)
            call.end(f"bad offer: {clip(exc.message)}", terminate=False)
            return
        except GraphAPIError as exc:
            log.warning("call %s: answering failed: %s", call.id, clip(exc))
            await self._abandon(call, f"answer failed: {clip(exc)}")
            return
        except TimeoutError:
            log.warning("call %s: not answered within %.0fs", call.id, self.answer_timeout)
            call.end("answer timed out", terminate=True)
            return
        except Exception as exc:
            # Anything else (a bug, an id the Graph request cannot carry): the call
            # still ends, and WhatsApp is told if it has heard of our answer.
            log.error("call %s: answering failed: %s", call.id, clip(exc), exc_info=exc)
            await self._abandon(call, f"internal error while answering: {clip(exc)}")
            return
        call.record.accepted_at = time.time()
        call.set_state(CallState.ACTIVE, "accepted")
        self._observe(lambda o: o.call_answered(call))
        self._persist(call.record)
        call.spawn(self._watch_media(call), "media-watch")
        if call.session_factory or self.session:
            call.spawn(self._run_session(call), "session")

    async def _abandon(self, call: Call, reason: str) -> None:
        # Before pre_accept went through the user's phone still rings: reject it;
        # after, WhatsApp knows our answer: terminate.
        answered = call.state is CallState.PRE_ACCEPTED
        if not answered:
            await self._reject(call.id)
        call.end(reason, terminate=answered)

    async def _watch_media(self, call: Call) -> None:
        """End an answered call whose media never comes up, or stops coming in.

        WhatsApp's offers carry no end-of-candidates, so ICE that never connects
        never "fails"; and RTP can stop while ICE consent still passes. The check
        is a counter read every few seconds: nothing is added per packet.
        """
        try:
            async with asyncio.timeout(self.media_timeout):
                await call.media_up.wait()
        except TimeoutError:
            log.warning("call %s: media not up %.0f s after answer", call.id, self.media_timeout)
            call.end(f"no media within {self.media_timeout:.0f} s of answer", terminate=True)
            return
        loop = asyncio.get_running_loop()
        period = min(5.0, self.media_idle_timeout / 4)
        seen, since = call.packets_received, loop.time()
        while True:
            await asyncio.sleep(period)
            count = call.packets_received
            if count != seen:
                seen, since = count, loop.time()
            elif loop.time() - since >= self.media_idle_timeout:
                idle = loop.time() - since
                log.warning("call %s: no inbound RTP for %.1f s", call.id, idle)
                call.end(f"no inbound media for {idle:.0f} s", terminate=True)
                return

    async def _run_session(self, call: Call) -> None:
        factory = call.session_factory or self.session
        assert factory is not None
        try:
            await factory(call)
        except GatewayError as exc:
            log.warning("call %s: session ended with error: %s", call.id, clip(exc))
            call.end(f"session error: {clip(exc.message)}", terminate=True)

    # --- bookkeeping -------------------------------------------------------------

    def _record_for(self, event: CallConnect, term: CallTerminate) -> CallRecord:
        return CallRecord(
            call_id=event.call_id,
            direction=event.direction,
            peer=event.from_,
            state=CallState.ENDED,
            end_reason="terminated before it was answered",
            terminate_status=term.status,
            ended_at=time.time(),
        )

    def _ended(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        self._remember(call.record)
        self._observe(lambda o: o.call_ended(call))
        self._released.set()
        self._persist(call.record)

    async def _save(self, record: CallRecord) -> None:
        # A store failure is logged, never raised: the call itself must go on (or end).
        try:
            await self.store.save_call(record)
        except Exception as exc:
            log.error("call %s: record not saved: %s", clip(record.call_id), clip(exc))

    def _persist(self, record: CallRecord) -> None:
        """Save ``record`` without waiting (the store applies writes in order)."""
        task = asyncio.create_task(self._save(record), name=f"store:save:{record.call_id}")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _remember(self, record: CallRecord) -> None:
        self.history[record.call_id] = record
        while len(self.history) > self._history_size:
            self.history.popitem(last=False)

    def get(self, call_id: str) -> Call:
        """The live call with this id, or CallError."""
        try:
            return self.calls[call_id]
        except KeyError:
            raise CallError(f"no active call {call_id}") from None
