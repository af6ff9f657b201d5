"""Placing a business-initiated call: the connect request, the ring timer, the user's answer.

The call manager counts the call against its limit while it is dialed and files
it under the id the Cloud API returns; this module holds the steps that concern
the call alone.
"""

from __future__ import annotations

import asyncio
import logging

from aiortc import RTCSessionDescription

from .. import sdp
from ..call import Call
from ..graph import GraphClient
from ..logsafe import clip
from ..records import CallState

__all__ = ["apply_answer", "dial", "ring"]

# The calls' logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.calls")


async def dial(
    call: Call, graph: GraphClient, to: str, biz_opaque_callback_data: str | None
) -> str:
    """Send ``connect`` with ``call``'s offer to ``to``; returns the Cloud API's call id.

    On any failure (GraphAPIError, cancellation) the call's media is closed and the
    error raised: its inbound audio closed (the decoder's libopus state freed now, as at
    the end of every call), its peer connection too.
    """
    try:
        offer = await call.build_offer()
        return await graph.connect(to, offer, biz_opaque_callback_data=biz_opaque_callback_data)
    except BaseException:
        if call.inbound is not None:
            call.inbound.close()
        await call.pc.close()
        raise


async def ring(call: Call, seconds: float) -> None:
    """End ``call`` (with ``terminate``) unless the user answers within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while call.state in (CallState.DIALING, CallState.RINGING):
                await call.state_changed.wait()
                call.state_changed.clear()
    except TimeoutError:
        log.info("call %s: not answered within %.0f s", call.id, seconds)
        call.end(f"not answered within {seconds:.0f} s", terminate=True)


async def apply_answer(call: Call, answer: str) -> bool:
    """Apply the user's SDP answer to a ringing ``call``.

    True when it took; False when the call was not waiting for one (logged) or the
    answer was bad (the call is then ended with ``terminate``).
    """
    if call.state not in (CallState.DIALING, CallState.RINGING):
        log.warning("call %s: SDP answer in state %s ignored", call.id, call.state)
        return False
    try:
        await call.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    except ValueError as exc:
        log.warning("call %s: bad SDP answer: %s", call.id, clip(exc))
        call.end("bad SDP answer", terminate=True)
        return False
    call.remote_sdp = answer
    call.use_payload_types(answer)
    call.playout.bitrate = sdp.opus_bitrate(answer)
    return True
