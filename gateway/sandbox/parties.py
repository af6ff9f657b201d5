"""The phones as the fake Graph API knows them: the user at the far end, a call's user end.

The simulated users (user.py) and the browser phone (browser_call.py) implement
these protocols, so the imports go one way: the phones import the sandbox, the
sandbox only these protocols.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Callee", "Caller", "SandboxCall"]


class Caller(Protocol):
    """The WhatsApp user at the far end of a sandbox call."""

    @property
    def name(self) -> str: ...

    @property
    def wa_id(self) -> str: ...


class Callee(Caller, Protocol):
    """A WhatsApp user the business can call and ask for call permission (a simulated user)."""

    @property
    def permission_reply(self) -> str:
        """How the user answers a call permission request: accept, accept_permanent, ..."""
        ...

    def receive_call(self, call_id: str, offer: str, callback_data: str | None) -> object:
        """The business calls this user (the fake Graph API accepted ``connect``)."""
        ...


class SandboxCall(Protocol):
    """What the fake Graph API needs of a call's user end (a simulated phone, the browser)."""

    @property
    def user(self) -> Caller: ...

    @property
    def direction(self) -> str: ...

    def check_action(self, action: str, body: dict[str, Any]) -> str | None:
        """Meta's checks on a business action for this call; a reason when refused."""
        ...

    def on_action(self, action: str, body: dict[str, Any]) -> None:
        """Apply an accepted business action."""
        ...

    async def close(self) -> None:
        """Tear down without telling anyone (sandbox shutdown)."""
        ...
