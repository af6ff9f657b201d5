"""Events that come before the call they concern (Meta's deliveries can be out of order).

A ``terminate`` may come before the user's ``connect`` offer: it is remembered,
and the connect that follows is not answered. A status or the user's SDP answer
may come before our own ``connect`` request returned the call's id: it is held,
and handled once the call is filed under that id. Both are bounded: the oldest
go first.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from ..events import CallConnect, CallStatus, CallTerminate
from ..records import CallRecord, CallState

__all__ = ["EarlyEvents"]

# The calls' logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.calls")

# At most this many terminates before their connect, and calls with held events.
MAX_TERMINATES = 10_000
MAX_HELD = 1000


class EarlyEvents:
    """Terminates before their connect, and events before their call id is known."""

    def __init__(self) -> None:
        self.terminates: OrderedDict[str, CallTerminate] = OrderedDict()
        self.held: OrderedDict[str, list[CallConnect | CallStatus]] = OrderedDict()

    def terminated(self, event: CallTerminate) -> None:
        """Remember a terminate for a call no one has heard of yet."""
        log.info("call %s: terminate before connect; remembered", event.call_id)
        self.terminates[event.call_id] = event
        while len(self.terminates) > MAX_TERMINATES:
            self.terminates.popitem(last=False)

    def ended_before_connect(self, event: CallConnect) -> CallRecord | None:
        """The record of a call whose terminate came before this connect, else None."""
        term = self.terminates.pop(event.call_id, None)
        if term is None:
            return None
        log.info("call %s: connect arrived after its terminate; not answering", event.call_id)
        return CallRecord(
            call_id=event.call_id,
            direction=event.direction,
            peer=event.from_,
            state=CallState.ENDED,
            end_reason="terminated before it was answered",
            terminate_status=term.status,
            ended_at=time.time(),
        )

    def hold(self, event: CallConnect | CallStatus) -> None:
        """Keep an event for a call whose ``connect`` request has not returned its id."""
        log.info("call %s: %s before the call is known; held", event.call_id, type(event).__name__)
        self.held.setdefault(event.call_id, []).append(event)
        while len(self.held) > MAX_HELD:
            self.held.popitem(last=False)

    def release(self, call_id: str) -> list[CallConnect | CallStatus]:
        """The events held for ``call_id``, in arrival order (and forget them)."""
        return self.held.pop(call_id, [])
