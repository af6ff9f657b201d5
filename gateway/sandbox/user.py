"""Simulated WhatsApp users: real aiortc peers that call the gateway like a phone would.

A user places a call by posting a signed ``connect`` webhook with an SDP offer,
or is called by the business through the fake Graph API; each call's phone (its
peer, media and signalling) is a :class:`~gateway.sandbox.user_call.UserCall`.
"""

from __future__ import annotations

import asyncio

from ..media.frameclock import FrameClock
from .cloud import CloudAPISandbox
from .relay import Impairment
from .user_call import HEARD_RMS, PHONE_MAX_BURST, PhoneUser, UserCall
from .user_sdp import MediaFault

__all__ = ["HEARD_RMS", "PHONE_MAX_BURST", "PhoneUser", "SimulatedUser", "UserCall"]


class SimulatedUser:
    """A WhatsApp user with a phone number, a name, and a phone.

    For calls from the business, ``answer`` says what the phone does: ``"answer"``
    after ``ring_seconds``, ``"reject"``, or ``"ignore"`` (ring until someone gives
    up). ``permission_reply`` is how the user answers a call permission request:
    ``"accept"``, ``"accept_permanent"``, ``"reject"`` or ``"ignore"``.
    """

    def __init__(
        self,
        sandbox: CloudAPISandbox,
        wa_id: str,
        name: str = "Sandbox User",
        *,
        answer: str = "answer",
        ring_seconds: float = 0.3,
        permission_reply: str = "ignore",
    ) -> None:
        self.sandbox = sandbox
        self.wa_id = wa_id
        self.name = name
        self.answer = answer
        self.ring_seconds = ring_seconds
        self.permission_reply = permission_reply
        self.incoming: asyncio.Queue[UserCall] = asyncio.Queue()
        sandbox.users[wa_id] = self

    async def place_call(
        self,
        *,
        inbound: bool = True,
        fault: MediaFault | None = None,
        payload_types: tuple[int, int] | None = None,
        network: Impairment | None = None,
        jitter_window: int = 2,
        clock: FrameClock | None = None,
        max_burst: int = PHONE_MAX_BURST,
    ) -> UserCall:
        """Call the business: post a signed connect webhook with our offer.

        ``inbound=False`` leaves received audio undecoded (load tests count packets);
        ``fault`` breaks the call's media on purpose; ``payload_types`` offers Opus
        and telephone-event on other numbers than WhatsApp's 111 and 126;
        ``network`` sends the media through a relay that loses and delays it, and
        ``jitter_window`` (frames) is how long the phone waits for a late packet.
        ``clock``: the frame clock the phone sends its 20 ms frames on (default: the
        loop's shared one, every simulated phone at the same instants; the load
        tester gives each caller a phase of its own, :mod:`gateway.loadtest.phases`).
        ``max_burst`` (frames): how much sending the phone makes up after a stall of
        this process (see :data:`PHONE_MAX_BURST`).
        """
        call = UserCall(self, self.sandbox.new_call_id(), clock=clock, max_burst=max_burst)
        call.fault = fault
        call.network = network
        call.jitter_window = jitter_window
        if payload_types is not None:
            call.opus_pt, call.dtmf_pt = payload_types
        await call.start(decode=inbound)
        return call

    def receive_call(self, call_id: str, offer: str, callback_data: str | None) -> UserCall:
        """The business calls this user (the fake Graph API accepted ``connect``)."""
        call = UserCall(self, call_id, direction="BUSINESS_INITIATED", callback_data=callback_data)
        self.sandbox.calls[call_id] = call
        call._spawn(call._ring(offer))
        self.incoming.put_nowait(call)
        return call
