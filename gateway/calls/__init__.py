"""The calls: the Cloud API's call events routed to calls, one per call id.

:class:`CallManager` (manager.py) owns every call and routes the webhook events
to them; beside it, one module a concern:

- inbox.py: the webhook events queued, then handled one at a time in arrival order;
- answer.py: answering a user's call (pre_accept, accept), or refusing it;
- dial.py: placing a business-initiated call, its ring timer, the user's answer;
- early.py: the events that come before their call (terminate before connect, ...);
- active.py: what runs beside an answered call (the media watchdog, the bot session);
- ledger.py: what is kept of the calls (records in the store, the recent history);
- recovery.py: ending the calls a dead process left live, replaying its events.

One call's state machine is :class:`gateway.call.Call`. Every module logs as
``gateway.calls``, the name operators filter on.
"""

from ..call import Call, CallObserver, SessionFactory
from ..records import CallRecord, CallState
from .manager import CallManager
from .recovery import RESTART_END_REASON

__all__ = [
    "RESTART_END_REASON",
    "Call",
    "CallManager",
    "CallObserver",
    "CallRecord",
    "CallState",
    "SessionFactory",
]
