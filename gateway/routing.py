"""Where webhook events and API requests about a call go.

The webhook receiver and the HTTP API never look a call up themselves: they ask
a :class:`Router`. :class:`LocalRouter` (one gateway process, the default) hands
everything to its own call manager; :class:`gateway.cluster.ClusterRouter` finds
the worker that owns the call through Redis and acts there. Both answer the same
way, so the rest of the gateway has one code path.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from .calls import CallManager
from .errors import CallError, StoreError, UnavailableError
from .events import Event, PermissionReply

T = TypeVar("T")


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
    """One process: every call is local; state is in the call manager's store.

    Each new event is deduplicated and journaled in the store (on disk with the
    default SQLite store) before ``deliver`` returns, so before the webhook's 200.
    """

    def __init__(self, calls: CallManager) -> None:
        self.calls = calls

    async def start(self) -> None:
        """Nothing to start."""

    async def aclose(self) -> None:
        """Nothing to stop."""

    async def deliver(self, event: Event) -> bool:
        """Journal the event and queue it on the call manager, unless it was seen before."""
        try:
            entries = await self.calls.store.journal([event])
        except StoreError as exc:
            # Not durable, so not taken: the 503 makes WhatsApp deliver it again.
            raise UnavailableError(f"store unavailable: {exc.message}") from None
        for entry in entries:
            self.calls.dispatch(entry)
        return bool(entries)

    async def admit_new_call(self) -> None:
        """The call manager checks its own limit; nothing cluster-wide here."""
        if not self.calls.accepting:
            raise CallError("gateway draining: not placing new calls")

    async def call_record(self, call_id: str) -> dict[str, Any] | None:
        """From the live calls, then this process's history, then the store."""
        live = self.calls.calls.get(call_id)
        record = live.record if live else self.calls.history.get(call_id)
        if record is None:
            record = await self._store_read(self.calls.store.get_call(call_id))
        return None if record is None else record.as_dict()

    async def hang_up(self, call_id: str) -> dict[str, Any] | None:
        """End the call, sending ``terminate``."""
        call = self.calls.calls.get(call_id)
        if call is None:
            return None
        await call.end("hung up through the API", terminate=True)
        return call.record.as_dict()

    async def list_calls(self) -> dict[str, list[dict[str, Any]]]:
        """Live calls and the 100 newest records of the store (kept across restarts)."""
        recent = await self._store_read(self.calls.store.recent_calls(100))
        return {
            "active": [c.record.as_dict() for c in self.calls.calls.values()],
            "recent": [r.as_dict() for r in recent],
        }

    async def permission_reply(self, wa_id: str) -> dict[str, Any] | None:
        """The latest reply, from this process or the store."""
        reply = self.calls.permission_replies.get(wa_id)
        if reply is None:
            reply = await self._store_read(self.calls.store.permission_reply(wa_id))
        return None if reply is None else reply_as_dict(reply)

    async def _store_read(self, read: Awaitable[T]) -> T:
        try:
            return await read
        except StoreError as exc:
            raise UnavailableError(f"store unavailable: {exc.message}") from None

    def status(self) -> dict[str, Any]:
        """Mode and live call count."""
        return {"mode": "single", "active_calls": len(self.calls.calls)}
