"""A call: its state machine, peer connection, media tracks and tasks.

A user-initiated call goes::

    NEW --(answer built, pre_accept sent)--> PRE_ACCEPTED --(accept sent)--> ACTIVE
        --(terminate webhook | bot hangs up | media fails)--> ENDED

Every transition goes through :meth:`Call.set_state`, which logs ``old -> new``
with the call id. Every task a call starts is owned by the call and cancelled
when it ends, so an ended call leaves no task and no peer connection behind.
:mod:`gateway.calls` routes the Cloud API's events to the calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription

from . import rtc, sdp
from .errors import CallError, GraphAPIError, SDPError
from .graph import GraphClient
from .logs import call_context
from .logsafe import clip
from .media.inbound import InboundAudio
from .media.opus import DEFAULT_COMPLEXITY
from .media.playout import PlayoutTrack
from .media.reports import ReportingReceiver
from .media.sender import PlayoutSender
from .media.transport import CallTransport
from .records import CallRecord, CallState

__all__ = ["Call", "CallObserver", "SessionFactory"]

# The calls' logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.calls")

# Bounds on the two awaits of a call's teardown, so no failure can hold a slot:
# aiortc's close, and the terminate request (its retries stop at 10 s anyway).
CLOSE_MEDIA_TIMEOUT = 5.0
TERMINATE_TIMEOUT = 15.0


# Which transitions are legal; anything else is a bug worth a loud log line.
_NEXT: dict[CallState, set[CallState]] = {
    CallState.NEW: {CallState.PRE_ACCEPTED, CallState.DIALING, CallState.ENDING},
    CallState.DIALING: {CallState.RINGING, CallState.ACTIVE, CallState.ENDING},
    CallState.RINGING: {CallState.ACTIVE, CallState.ENDING},
    CallState.PRE_ACCEPTED: {CallState.ACTIVE, CallState.ENDING},
    CallState.ACTIVE: {CallState.ENDING},
    CallState.ENDING: {CallState.ENDED},
    CallState.ENDED: set(),
}


SessionFactory = Callable[["Call"], Awaitable[None]]


class CallObserver(Protocol):
    """Told about every call's life by :class:`CallManager` (metrics, recordings, events).

    Called synchronously on the event loop; must not block. An observer that raises
    is logged and the call goes on.
    """

    def call_started(self, call: Call) -> None:
        """A call exists: a user's offer arrived, or our connect got an id."""

    def call_answered(self, call: Call) -> None:
        """The call became ACTIVE (accepted, or the user answered ours)."""

    def call_ended(self, call: Call) -> None:
        """The call reached ENDED; its record is final except Meta's terminate record,
        which may still arrive (``record.terminate_status``)."""

    def call_refused(self, call_id: str, reason: str) -> None:
        """A user's call was rejected without being answered (``reason``: ``capacity``)."""


class Call:
    """One call: its peer connection, media tracks, state and tasks."""

    def __init__(
        self,
        record: CallRecord,
        *,
        graph: GraphClient,
        on_ended: Callable[[Call], None] | None = None,
        opus_complexity: int = DEFAULT_COMPLEXITY,
    ) -> None:
        self.record = record
        self.graph = graph
        self.pc: RTCPeerConnection = rtc.new_peer_connection()
        self.playout = PlayoutTrack(complexity=opus_complexity)
        self.inbound: InboundAudio | None = None
        self.answer_sdp: str | None = None
        self.remote_sdp: str | None = None
        self.media_up = asyncio.Event()
        self.ended = asyncio.Event()
        self.state_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_ended = on_ended
        self._closing: asyncio.Task[None] | None = None
        # An end settled elsewhere (reason, time) that the record takes when the call ends.
        self._settled_end: tuple[str, float] | None = None
        self._frame_listeners: tuple[Callable[[Any], None], ...] = ()
        self.dtmf_listeners: list[Callable[[str, int], None]] = []
        # Awaited (briefly) when the call ends, before its tasks are cancelled.
        self.end_hooks: list[Callable[[], Awaitable[None]]] = []
        # The bot session running on this call, if any (see gateway.pipeline).
        self.session: Any = None
        # Overrides the manager's session factory for this call (a per-call bot).
        self.session_factory: SessionFactory | None = None

        @self.pc.on("connectionstatechange")
        def _on_pc_state() -> None:
            state = self.pc.connectionState
            log.info("call %s: media %s", self.id, state)
            if state == "connected":
                self.media_up.set()
            elif state == "failed" and self.state is not CallState.ENDED:
                self.end("media path failed", terminate=True)

    @property
    def id(self) -> str:
        """The Cloud API call id (``wacid...``)."""
        return self.record.call_id

    @property
    def state(self) -> CallState:
        """The current state; change it only through :meth:`set_state`."""
        return self.record.state

    def set_state(self, new: CallState, reason: str = "") -> None:
        """The one place a call changes state."""
        old = self.record.state
        if new is old:
            return
        if new not in _NEXT[old]:
            raise CallError(f"call {self.id}: illegal transition {old} -> {new}")
        self.record.state = new
        self.state_changed.set()
        log.info("call %s: %s -> %s%s", self.id, old, new, f" ({clip(reason)})" if reason else "")

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task owned by this call (cancelled when the call ends)."""
        task = asyncio.create_task(coro, name=f"{self.id}:{name}", context=call_context(self.id))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.state is not CallState.ENDED:
            log.error(
                "call %s: task %s failed: %s", self.id, task.get_name(), clip(exc), exc_info=exc
            )
            self.end(f"internal error in {task.get_name()}", terminate=True)

    @property
    def packets_received(self) -> int:
        """Inbound RTP packets so far (0 before media is attached)."""
        return self.inbound.received if self.inbound is not None else 0

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        """Tasks the call still owns."""
        return frozenset(self._tasks)

    # --- media ----------------------------------------------------------------

    def _attach_media(self) -> None:
        # Called once the remote description created the audio transceiver.
        transceivers = self.pc.getTransceivers()
        if len(transceivers) != 1 or transceivers[0].kind != "audio":
            raise SDPError("expected exactly one audio media section")
        transceiver = transceivers[0]
        transceiver.sender.replaceTrack(self.playout)
        PlayoutSender.adopt(transceiver.sender)
        CallTransport.adopt(transceiver.receiver.transport)
        transceiver.direction = "sendrecv"
        self._start_inbound(transceiver.receiver)

    def _start_inbound(self, receiver: RTCRtpReceiver) -> None:
        # The caller's audio, decoded, to the frame and DTMF listeners.
        ReportingReceiver.adopt(receiver)  # its RTCP reports from the loop's one schedule
        self.inbound = InboundAudio(
            receiver,
            on_frame=self._on_frame,
            on_dtmf=self._on_dtmf,
            opus_pt=rtc.OPUS_PT,
            dtmf_pt=rtc.DTMF_PT,
        )
        self._wire_frames()
        self.inbound.attach()

    @property
    def frame_listeners(self) -> tuple[Callable[[Any], None], ...]:
        """Who gets each decoded 20 ms frame from the caller (in this order)."""
        return self._frame_listeners

    def add_frame_listener(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener(frame)`` with each decoded frame from the caller, in the media
        callback (so it must be quick and must not block)."""
        self._frame_listeners += (listener,)
        self._wire_frames()

    def remove_frame_listener(self, listener: Callable[[Any], None]) -> None:
        """Stop calling ``listener`` (nothing if it is not a listener)."""
        listeners = list(self._frame_listeners)
        if listener in listeners:
            listeners.remove(listener)
            self._frame_listeners = tuple(listeners)
            self._wire_frames()

    def _wire_frames(self) -> None:
        # A lone listener (the bot session's, almost always) is called by the media
        # path itself: one Python call fewer per frame than the fan-out below.
        if self.inbound is None:
            return
        listeners = self._frame_listeners
        target = listeners[0] if len(listeners) == 1 else self._on_frame
        if self.inbound.on_frame != target:  # bound methods: equal, not identical
            self.inbound.on_frame = target

    def _on_frame(self, frame: Any) -> None:
        for listener in self._frame_listeners:
            listener(frame)

    def _on_dtmf(self, digit: str, duration_ms: int) -> None:
        log.info("call %s: DTMF %s (%d ms)", self.id, digit, duration_ms)
        for listener in self.dtmf_listeners:
            listener(digit, duration_ms)

    def use_payload_types(self, negotiated: str) -> None:
        """Receive Opus and DTMF on the payload types of the negotiated description.

        WhatsApp uses 111 and 126, but any WebRTC peer may number them otherwise
        (aiortc's own offers put Opus on 96); aiortc sends on the negotiated ones
        by itself. Without telephone-event, no packet is taken for DTMF.
        """
        if self.inbound is None:
            return
        opus = sdp.payload_type(negotiated, "opus")
        dtmf = sdp.payload_type(negotiated, "telephone-event")
        self.inbound.opus_pt = rtc.OPUS_PT if opus is None else opus
        self.inbound.dtmf_pt = -1 if dtmf is None else dtmf  # RTP payload types are 0-127
        if (opus, dtmf) != (rtc.OPUS_PT, rtc.DTMF_PT):
            log.info("call %s: payload types opus=%s telephone-event=%s", self.id, opus, dtmf)

    async def build_answer(self, offer: str) -> str:
        """Apply the user's offer and return our SDP answer in Meta's form."""
        sdp.validate_offer(offer)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except ValueError as exc:
            raise SDPError(f"offer rejected by the WebRTC stack: {exc}") from exc
        self._attach_media()
        self.playout.bitrate = sdp.opus_bitrate(offer)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self.use_payload_types(self.pc.localDescription.sdp)
        self.remote_sdp = offer
        self.answer_sdp = sdp.prepare_answer(self.pc.localDescription.sdp)
        return self.answer_sdp

    async def build_offer(self) -> str:
        """Our SDP offer for a business-initiated call, in Meta's form."""
        sender = PlayoutSender.adopt(self.pc.addTrack(self.playout))
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.sender is sender)
        CallTransport.adopt(receiver.transport)
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        self._start_inbound(receiver)
        return sdp.keep_fingerprint(self.pc.localDescription.sdp)

    # --- ending ----------------------------------------------------------------

    def end(
        self, reason: str, *, terminate: bool, ended_at: float | None = None
    ) -> asyncio.Task[None]:
        """End the call once (idempotent); ``terminate`` also tells the Cloud API.

        ``ended_at``: when it ended, if that was settled elsewhere (a cluster's record
        keeps a call's first end): then the record takes this end (``reason``, at
        ``ended_at``) even if the call was ending already for a reason of its own.
        """
        if ended_at is not None and self.state is not CallState.ENDED:
            self._settled_end = (reason, ended_at)
        if self._closing is None:
            self._closing = asyncio.create_task(
                self._close(reason, terminate),
                name=f"{self.id}:close",
                context=call_context(self.id),
            )
        return self._closing

    async def _close(self, reason: str, terminate: bool) -> None:
        # Whatever fails in here (a hook, aiortc, the Graph API, an id the Graph
        # request cannot even encode), the call reaches ENDED and frees its slot.
        if self.state is CallState.ENDED:
            return
        try:
            self.set_state(CallState.ENDING, reason)
            self.record.end_reason = reason
            await self._run_end_hooks()
            await self._cancel_tasks()
            await self._close_media()
            if terminate:
                await self._send_terminate()
        finally:
            self.record.ended_at = time.time()
            if self._settled_end is not None:
                self.record.end_reason, self.record.ended_at = self._settled_end
            self.record.state = CallState.ENDED
            log.info("call %s: ENDING -> ENDED (%s)", self.id, clip(reason))
            self.state_changed.set()
            self.ended.set()
            try:
                # Observers (metrics, recordings, events) still see the session here.
                if self._on_ended is not None:
                    self._on_ended(self)
            finally:
                self._release()

    async def _run_end_hooks(self) -> None:
        for hook in self.end_hooks:
            try:
                await hook()
            except Exception:
                log.exception("call %s: end hook failed", self.id)

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        pending = [t for t in self._tasks if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _close_media(self) -> None:
        try:
            self.playout.stop()
            if self.inbound is not None:
                self.inbound.close()
            async with asyncio.timeout(CLOSE_MEDIA_TIMEOUT):
                await self.pc.close()
        except Exception:  # the call must still end and free its slot
            log.exception("call %s: closing the media path failed", self.id)

    async def _send_terminate(self) -> None:
        try:
            async with asyncio.timeout(TERMINATE_TIMEOUT):
                await self.graph.terminate(self.id)
        except GraphAPIError as exc:
            log.warning("call %s: terminate failed: %s", self.id, clip(exc))
        except Exception as exc:
            log.error("call %s: terminate could not be sent: %s", self.id, clip(exc), exc_info=exc)

    def _release(self) -> None:
        # Break the call's reference cycles (the peer connection's handlers point
        # back at the call) so an ended call is freed at once, not at a full GC.
        self.pc.remove_all_listeners()
        self._frame_listeners = ()  # the inbound audio dropped its callback when it closed
        self.dtmf_listeners.clear()
        self.end_hooks.clear()
        self.playout.on_frame_sent = None
        self.session = None  # it points back at the call
