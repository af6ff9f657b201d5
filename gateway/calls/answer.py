"""Answering a user's call, or refusing it, through the Cloud API.

An answer is built from the user's offer, sent as ``pre_accept`` then ``accept``
within a deadline; whatever goes wrong on the way, the call ends and WhatsApp
is told in the form it expects at that point (``reject`` while the user's phone
still rings, ``terminate`` once it has heard our answer).
"""

from __future__ import annotations

import asyncio
import logging

from ..call import Call
from ..errors import GraphAPIError, SDPError
from ..graph import GraphClient
from ..logsafe import clip
from ..records import CallState

__all__ = ["abandon", "answer_call", "send_reject"]

# The calls' logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.calls")


async def answer_call(call: Call, offer: str, graph: GraphClient, seconds: float) -> bool:
    """Answer ``call`` (pre_accept, then accept) within ``seconds``.

    True once the Cloud API took the accept; otherwise the call was ended (and
    rejected or terminated as WhatsApp needs) and False is returned. Never raises.
    """
    try:
        async with asyncio.timeout(seconds):
            answer = await call.build_answer(offer)
            await graph.pre_accept(call.id, answer)
            call.set_state(CallState.PRE_ACCEPTED, "answer sent")
            # Meta requires the accept SDP to be byte-identical to pre_accept's.
            await graph.accept(call.id, answer)
    except SDPError as exc:
        log.warning("call %s: cannot answer: %s", call.id, clip(exc))
        await send_reject(graph, call.id)
        call.end(f"bad offer: {clip(exc.message)}", terminate=False)
        return False
    except GraphAPIError as exc:
        log.warning("call %s: answering failed: %s", call.id, clip(exc))
        await abandon(call, graph, f"answer failed: {clip(exc)}")
        return False
    except TimeoutError:
        log.warning("call %s: not answered within %.0fs", call.id, seconds)
        call.end("answer timed out", terminate=True)
        return False
    except Exception as exc:
        # Anything else (a bug, an id the Graph request cannot carry): the call
        # still ends, and WhatsApp is told if it has heard of our answer.
        log.error("call %s: answering failed: %s", call.id, clip(exc), exc_info=exc)
        await abandon(call, graph, f"internal error while answering: {clip(exc)}")
        return False
    return True


async def abandon(call: Call, graph: GraphClient, reason: str) -> None:
    """End a call whose answering failed, telling WhatsApp in the form it expects."""
    # Before pre_accept went through the user's phone still rings: reject it;
    # after, WhatsApp knows our answer: terminate.
    answered = call.state is CallState.PRE_ACCEPTED
    if not answered:
        await send_reject(graph, call.id)
    call.end(reason, terminate=answered)


async def send_reject(graph: GraphClient, call_id: str) -> None:
    """Send ``reject`` for ``call_id``; a failure is logged, never raised."""
    try:
        await graph.reject(call_id)
    except GraphAPIError as exc:
        log.warning("call %s: reject failed: %s", call_id, clip(exc))
    except Exception as exc:
        log.error("call %s: reject could not be sent: %s", call_id, clip(exc), exc_info=exc)
