"""Taking over from a dead process: ending the calls it left live, replaying its events.

A call cannot move to another process (its ICE and DTLS state died with the old
one), so each is recorded as ended at start-up (``RESTART_END_REASON``) and
``terminate`` goes to the Cloud API in the background; WhatsApp's terminate
webhook completes the record later (the record stays in the call manager's
history, where the webhook finds it). The gateway then tells the business backend
(``call.ended``, :meth:`gateway.outbox.EventOutbox.ended`). Journaled events the
dead process never handled are queued again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..errors import GraphAPIError
from ..events import CallConnect, Direction
from ..graph import GraphClient
from ..records import CallRecord, CallState
from ..store import JournalEntry
from .answer import send_reject
from .ledger import CallLedger

__all__ = ["RESTART_END_REASON", "recover"]

# The calls' logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.calls")


# The end reason of calls that were live in a process that died.
RESTART_END_REASON = "gateway restarted: the call was live in a process that died"


async def recover(
    ledger: CallLedger,
    graph: GraphClient,
    spawn: Callable[[Coroutine[Any, Any, Any], str], None],
    dispatch: Callable[[JournalEntry], None],
) -> list[CallRecord]:
    """End the calls a dead process left live, and queue the events it never handled.

    ``spawn`` runs the terminate requests in the background; ``dispatch`` queues
    the unhandled events. Returns the records of the calls ended this way.
    """
    orphans = await ledger.store.live_calls()
    for record in orphans:
        was = record.state
        record.state = CallState.ENDED
        record.ended_at = time.time()
        record.end_reason = RESTART_END_REASON
        await ledger.save(record)
        # The object WhatsApp's terminate webhook fills in, and the backend's call.ended
        # waits for (as for a call that ended here).
        ledger.remember(record)
        log.warning("call %s: was %s in a process that died; ending it", record.call_id, was)
        spawn(_end_orphan(graph, record, was), f"{record.call_id}:end-orphan")
    replayed = 0
    for entry in await ledger.store.unhandled():
        event = entry.event
        if isinstance(event, CallConnect) and event.sdp_type == "offer":
            if await ledger.store.get_call(event.call_id) is not None:
                # The dead process had taken the call: it is one of the orphans.
                await ledger.mark_handled(entry)
                continue
        replayed += 1
        dispatch(entry)
    if orphans or replayed:
        log.warning(
            "recovered after a restart: %d live call(s) ended, %d unhandled event(s) queued",
            len(orphans),
            replayed,
        )
    return orphans


async def _end_orphan(graph: GraphClient, record: CallRecord, was: CallState) -> None:
    try:
        await graph.terminate(record.call_id)
        return
    except GraphAPIError as exc:
        if not (was is CallState.NEW and record.direction is Direction.USER_INITIATED):
            log.warning("call %s: terminate after restart failed: %s", record.call_id, exc)
            return
    # Never answered: Meta may want a reject instead.
    await send_reject(graph, record.call_id)
