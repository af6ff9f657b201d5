"""One call of a simulated WhatsApp user's phone: its aiortc peer, its media and its signalling.

The phone offers in WhatsApp's format (``a=mid:audio``, Opus on 111, telephone-event
on 126, ICE-lite, one sha-256 fingerprint), plays recorded speech, records what it
hears, sends DTMF as RFC 4733 packets, and hangs up by posting a ``terminate``
webhook. The user it belongs to (:class:`~gateway.sandbox.user.SimulatedUser`) is
seen through :class:`PhoneUser`, so the imports go one way: user.py imports this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from aiortc import RTCSessionDescription

from .. import rtc, sdp
from ..media.audio import SAMPLE_RATE, frame_rms
from ..media.dtmf import DtmfSender
from ..media.frameclock import FrameClock
from ..media.inbound import InboundAudio
from ..media.pcm import PCM
from ..media.playout import Playback, PlayoutTrack
from ..media.receiver import LazyDecoderReceiver
from ..media.sender import PlayoutSender
from ..media.transport import CallTransport
from . import payloads
from .actions import UserCallState, check_action
from .cloud import CloudAPISandbox
from .relay import Impairment, MediaRelay
from .user_sdp import (
    MediaFault,
    break_offer,
    first_candidate,
    renumber_payload_types,
    via,
    whatsapp_offer,
)

log = logging.getLogger(__name__)

# Frames quieter than this (int16 RMS) count as silence for "first heard" marks.
HEARD_RMS = 200.0

# A phone's audio clock is its own. The sandbox shares its process and event loop with
# the gateway under test, so when that process stalls (a loaded machine), the phone could
# not send meanwhile either: it then sends the frames it owes back to back, their RTP
# timestamps unbroken, as a real phone's packets reach a gateway whose process stalled
# (late, in a burst). Only after a longer stall (an outage, not scheduling) does it skip
# RTP time, as the gateway's own playout does after MAX_BURST frames.
PHONE_MAX_BURST = 50


class PhoneUser(Protocol):
    """The simulated user a call belongs to, as its phone needs it."""

    @property
    def sandbox(self) -> CloudAPISandbox: ...

    @property
    def name(self) -> str: ...

    @property
    def wa_id(self) -> str: ...

    @property
    def answer(self) -> str:
        """What the phone does when the business calls: answer, reject or ignore."""
        ...

    @property
    def ring_seconds(self) -> float: ...


class UserCall:
    """One call from a simulated user's phone."""

    def __init__(
        self,
        user: PhoneUser,
        call_id: str,
        *,
        direction: str = "USER_INITIATED",
        callback_data: str | None = None,
        clock: FrameClock | None = None,
        max_burst: int = PHONE_MAX_BURST,
    ) -> None:
        self.user = user
        self.call_id = call_id
        self.direction = direction
        self.callback_data = callback_data
        self.sandbox = user.sandbox
        self.state = UserCallState.OFFERED
        self.pc = rtc.new_peer_connection(shared_certificate=False)  # a phone of its own
        self.playout = PlayoutTrack(clock=clock, max_burst=max_burst)
        self.inbound: InboundAudio | None = None
        self.offer_sdp = ""
        self.answer_sdp: str | None = None
        self.accepted = asyncio.Event()
        self.media_up = asyncio.Event()
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.started_at = time.monotonic()
        self.accepted_at: float | None = None
        self.first_heard_at: float | None = None
        self.last_heard_at: float | None = None  # last frame louder than HEARD_RMS
        self._heard: list[np.ndarray] = []
        self.frames_heard = 0
        self.digits_heard: list[str] = []
        self.fault: MediaFault | None = None
        self.network: Impairment | None = None
        self.jitter_window = 2
        self.relay: MediaRelay | None = None
        self.opus_pt = rtc.OPUS_PT
        self.dtmf_pt = rtc.DTMF_PT
        self._tasks: set[asyncio.Task[Any]] = set()

        @self.pc.on("connectionstatechange")
        def _on_state() -> None:
            if self.pc.connectionState == "connected":
                self.media_up.set()
                self.sandbox.timeline.add(f"{user.name}: media connected (ICE + DTLS)")

    # --- setup ------------------------------------------------------------------

    async def start(self, *, decode: bool = True) -> None:
        sender = PlayoutSender.adopt(self.pc.addTrack(self.playout))
        CallTransport.adopt(sender.transport)
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        # A phone is the controlled side: Meta's edge is ICE-lite, the business controls.
        ice = sender.transport.transport
        ice._connection.ice_controlling = False
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.sender is sender)
        LazyDecoderReceiver.adopt(receiver)  # no idle decoder thread per phone
        if decode:
            self.inbound = InboundAudio(
                receiver,
                on_frame=self._on_frame,
                on_dtmf=None,
                opus_pt=self.opus_pt,
                dtmf_pt=self.dtmf_pt,
                window=self.jitter_window,
            )
            self.inbound.attach()
        self.offer_sdp = whatsapp_offer(self.pc.localDescription.sdp)
        if (self.opus_pt, self.dtmf_pt) != (rtc.OPUS_PT, rtc.DTMF_PT):
            self.offer_sdp = renumber_payload_types(
                self.offer_sdp, {rtc.OPUS_PT: self.opus_pt, rtc.DTMF_PT: self.dtmf_pt}
            )
        if self.fault is not None:
            self.offer_sdp = break_offer(self.offer_sdp, self.fault)
        if self.network is not None:
            self.relay = MediaRelay([first_candidate(self.offer_sdp)], self.network)
            await self.relay.start()
            self.offer_sdp = via(self.offer_sdp, self.relay.gateway_side)
        self.sandbox.calls[self.call_id] = self
        self.sandbox.timeline.add(f"{self.user.name} ({self.user.wa_id}) calls the business")
        response = await self.sandbox.deliver(
            payloads.connect_offer(
                call_id=self.call_id,
                user=self.user.wa_id,
                user_name=self.user.name,
                business=self.sandbox.business_number,
                phone_number_id=self.sandbox.phone_number_id,
                sdp=self.offer_sdp,
            )
        )
        self.sandbox.timeline.add(f"webhook: connect delivered -> HTTP {response.status_code}")

    async def _ring(self, offer: str) -> None:
        # A business call reaches the phone: ring, then do what the user would.
        user = self.user
        self.sandbox.timeline.add(f"{user.name}'s phone rings")
        await self._status("RINGING")
        if user.answer == "ignore":
            return
        await asyncio.sleep(user.ring_seconds)
        if self.state is UserCallState.ENDED:
            return
        if user.answer == "reject":
            self.sandbox.timeline.add(f"{user.name} declines the call")
            await self._status("REJECTED")
            await self._end("rejected by the user", notify=True)
            return
        await self._answer(offer)

    async def _answer(self, offer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        transceiver = self.pc.getTransceivers()[0]
        transceiver.sender.replaceTrack(self.playout)
        PlayoutSender.adopt(transceiver.sender)
        CallTransport.adopt(transceiver.receiver.transport)
        LazyDecoderReceiver.adopt(transceiver.receiver)
        transceiver.direction = "sendrecv"
        self.inbound = InboundAudio(
            transceiver.receiver,
            on_frame=self._on_frame,
            on_dtmf=None,
            opus_pt=rtc.OPUS_PT,
            dtmf_pt=rtc.DTMF_PT,
        )
        self.inbound.attach()
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self.answer_sdp = sdp.keep_fingerprint(self.pc.localDescription.sdp)
        self.sandbox.timeline.add(f"{self.user.name} answers")
        await self.sandbox.deliver(
            payloads.connect_answer(
                call_id=self.call_id,
                user=self.user.wa_id,
                user_name=self.user.name,
                business=self.sandbox.business_number,
                phone_number_id=self.sandbox.phone_number_id,
                sdp=self.answer_sdp,
                biz_opaque_callback_data=self.callback_data,
            )
        )
        self.state = UserCallState.ACCEPTED
        self.accepted_at = time.monotonic()
        self.accepted.set()
        await self._status("ACCEPTED")

    async def _status(self, status: str) -> None:
        await self.sandbox.deliver(
            payloads.call_status(
                call_id=self.call_id,
                status=status,
                recipient=self.user.wa_id,
                business=self.sandbox.business_number,
                phone_number_id=self.sandbox.phone_number_id,
                biz_opaque_callback_data=self.callback_data,
            )
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("sandbox call %s: %r", self.call_id, exc, exc_info=exc)

    # --- what the fake Graph API tells us -------------------------------------------

    def check_action(self, action: str, body: dict[str, Any]) -> str | None:
        """Meta's checks on a business action for this call; a reason when refused."""
        return check_action(self.call_id, self.state, self.answer_sdp, action, body)

    def on_action(self, action: str, body: dict[str, Any]) -> None:
        """Apply an accepted business action to the phone."""
        if action == "pre_accept":
            self.answer_sdp = body["session"]["sdp"]
            self.state = UserCallState.PRE_ACCEPTED
            self._spawn(self._apply_answer(body["session"]["sdp"]))
        elif action == "accept":
            if self.answer_sdp is None:
                self.answer_sdp = body["session"]["sdp"]
                self._spawn(self._apply_answer(self.answer_sdp))
            self.state = UserCallState.ACCEPTED
            self.accepted_at = time.monotonic()
            self.accepted.set()
        elif action in ("reject", "terminate"):
            # Meta confirms the end of the call with a terminate webhook.
            reason = "rejected" if action == "reject" else "hung up"
            self._spawn(self._end(f"{reason} by the business", notify=True))

    async def _apply_answer(self, answer: str) -> None:
        if self.fault is MediaFault.NO_ICE:
            return  # the phone never starts its ICE checks
        local_mid = sdp.mids(self.pc.localDescription.sdp)[0]
        text = sdp.rename_mid(answer, "audio", local_mid)
        if self.relay is not None:
            text = via(text, self.relay.browser_side)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))

    def _on_frame(self, frame: PCM) -> None:
        samples = np.frombuffer(frame, np.int16)  # the frame is ours (InboundAudio's promise)
        self._heard.append(samples)
        self.frames_heard += 1
        if frame_rms(samples)[0] > HEARD_RMS:
            self.last_heard_at = time.monotonic()
            if self.first_heard_at is None:
                self.first_heard_at = self.last_heard_at
                self.sandbox.timeline.add(f"{self.user.name} hears the bot")

    # --- what the user does --------------------------------------------------------------

    @property
    def heard(self) -> np.ndarray:
        """Everything the user heard so far (16 kHz mono int16)."""
        return np.concatenate(self._heard) if self._heard else np.zeros(0, np.int16)

    def play(self, pcm: np.ndarray) -> Playback:
        """Speak ``pcm`` (16 kHz mono int16) into the call."""
        self.sandbox.timeline.add(
            f"{self.user.name} speaks ({len(pcm) / SAMPLE_RATE:.1f} s of audio)"
        )
        return self.playout.play(pcm)

    def play_packets(self, packets: Sequence[bytes]) -> Playback:
        """Speak pre-encoded Opus packets (cheap, for load tests)."""
        return self.playout.play_packets(packets)

    async def press(self, digits: str, duration_ms: int = 160) -> None:
        """Press keys: RFC 4733 events on payload type 126."""
        sender = next(t.sender for t in self.pc.getTransceivers())
        dtmf = DtmfSender(sender, payload_type=self.dtmf_pt)
        for digit in digits:
            self.sandbox.timeline.add(f"{self.user.name} presses {digit}")
            await dtmf.send(digit, duration_ms=duration_ms)

    def stop_media(self) -> None:
        """Stop sending RTP while the connection stays up (ICE consent goes on)."""
        self.playout.stop()

    async def hang_up(self) -> None:
        """Hang up from the phone: Meta posts a terminate webhook."""
        await self._end("user hung up", notify=True)

    async def close(self) -> None:
        """Tear down without telling anyone (sandbox shutdown)."""
        await self._end("sandbox closed", notify=False)

    async def _end(self, reason: str, *, notify: bool) -> None:
        if self.state is UserCallState.ENDED:
            return
        accepted_at = self.accepted_at  # as the call ends, before the awaits below
        self.state = UserCallState.ENDED
        self.end_reason = reason
        self.sandbox.timeline.add(f"{self.user.name}'s call ends: {reason}")
        if self.inbound is not None:
            self.inbound.close()
        self.playout.stop()
        await self.pc.close()
        if self.relay is not None:
            self.relay.close()
        if self.direction != "USER_INITIATED":
            self.sandbox.permissions.record_call(self.user.wa_id, answered=accepted_at is not None)
        if notify:
            await self.sandbox.deliver(
                payloads.call_ended(
                    call_id=self.call_id,
                    user=self.user.wa_id,
                    business=self.sandbox.business_number,
                    phone_number_id=self.sandbox.phone_number_id,
                    direction=self.direction,
                    accepted_at=accepted_at,
                    biz_opaque_callback_data=self.callback_data,
                )
            )
        self.sandbox.calls.pop(self.call_id, None)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self.ended.set()
