"""Where webhook events and API requests about a call go.

The webhook receiver and the HTTP API never look a call up themselves: they ask
a :class:`Router`. :class:`LocalRouter` (one gateway process, the default) hands
everything to its own call manager; :class:`gateway.cluster.ClusterRouter` finds
the worker that owns the call through Redis and acts there. Both answer the same
way, so the rest of the gateway has one code path.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from .calls import CallManager
from .errors import CallError
from .events import Event, PermissionReply, event_key

# How many recent event keys a single process remembers to drop Meta's duplicates.
DEDUPE_SIZE = 20_000


class Router(Protocol):
    """What the webhook receiver and the API need to act on any call."""

    async def start(self) -> None:
        """Begin routing (connect, start background tasks)."""
        ...

    async def aclose(self) -> None:
        """Stop routing (after the calls ended)."""
        ...

    async def deliver(self, event: Event) -> bool:
        """Act on a webhook event once; False when it is a duplicate.

        Raises UnavailableError when it cannot be handled now (answer 503).
        """
        ...

    async def admit_new_call(self) -> None:
        """Raise CallError if a new business-initiated call must not be placed now."""
        ...

    async def call_record(self, call_id: str) -> dict[str, Any] | None:
        """The call's record as JSON, live or ended, or None when unknown."""
        ...

    async def hang_up(self, call_id: str) -> dict[str, Any] | None:
        """Terminate a live call wherever it runs; its record, or None if not live."""
        ...

    async def list_calls(self) -> dict[str, list[dict[str, Any]]]:
        """``{"active": [...], "recent": [...]}`` records."""
        ...

    async def permission_reply(self, wa_id: str) -> dict[str, Any] | None:
        """The last call permission reply from ``wa_id``, if one was seen."""
        ...

    def status(self) -> dict[str, Any]:
        """Figures for ``/healthz`` and ``/readyz``."""
        ...


def reply_as_dict(reply: PermissionReply) -> dict[str, Any]:
    """The API's view of a permission reply."""
    return {"accepted": reply.accepted, "permanent": reply.permanent, "at": reply.timestamp}


class LocalRouter:
    """One process: every call is local; duplicates are remembered in memory."""

    def __init__(self, calls: CallManager, *, dedupe_size: int = DEDUPE_SIZE) -> None:
        self.calls = calls
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._dedupe_size = dedupe_size

    async def start(self) -> None:
        """Nothing to start."""

    async def aclose(self) -> None:
        """Nothing to stop."""

    async def deliver(self, event: Event) -> bool:
        """Queue the event on the call manager unless it was seen before."""
        key = event_key(event)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self._dedupe_size:
            self._seen.popitem(last=False)
        self.calls.dispatch(event)
        return True

    async def admit_new_call(self) -> None:
        """The call manager checks its own limit; nothing cluster-wide here."""
        if not self.calls.accepting:
            raise CallError("gateway draining: not placing new calls")

    async def call_record(self, call_id: str) -> dict[str, Any] | None:
        """From the live calls, then the recent history."""
        live = self.calls.calls.get(call_id)
        record = live.record if live else self.calls.history.get(call_id)
        return None if record is None else record.as_dict()

    async def hang_up(self, call_id: str) -> dict[str, Any] | None:
        """End the call, sending ``terminate``."""
        call = self.calls.calls.get(call_id)
        if call is None:
            return None
        await call.end("hung up through the API", terminate=True)
        return call.record.as_dict()

    async def list_calls(self) -> dict[str, list[dict[str, Any]]]:
        """Live calls and the last 100 ended ones."""
        return {
            "active": [c.record.as_dict() for c in self.calls.calls.values()],
            "recent": [r.as_dict() for r in reversed(self.calls.history.values())][:100],
        }

    async def permission_reply(self, wa_id: str) -> dict[str, Any] | None:
        """From the replies this process received."""
        reply = self.calls.permission_replies.get(wa_id)
        return None if reply is None else reply_as_dict(reply)

    def status(self) -> dict[str, Any]:
        """Mode and live call count."""
        return {"mode": "single", "active_calls": len(self.calls.calls)}
