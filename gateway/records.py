"""Call records: what is known about a call while and after it happens.

A record outlives its call: the call manager keeps it in memory while the call
runs and writes it to the :mod:`gateway.store` at every step that matters, so a
restarted process still knows the call (and WhatsApp's terminate record of it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from .events import Direction


class CallState(StrEnum):
    """Where a call is in its life."""

    NEW = "NEW"
    DIALING = "DIALING"  # business-initiated: connect sent, waiting for the user
    RINGING = "RINGING"
    PRE_ACCEPTED = "PRE_ACCEPTED"
    ACTIVE = "ACTIVE"
    ENDING = "ENDING"
    ENDED = "ENDED"


@dataclass
class CallRecord:
    """What is known about a call after (and while) it happens."""

    call_id: str
    direction: Direction
    peer: str
    contact_name: str | None = None
    biz_opaque_callback_data: str | None = None
    state: CallState = CallState.NEW
    created_at: float = field(default_factory=time.time)
    accepted_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    # WhatsApp's terminate webhook: the billing truth.
    terminate_status: str | None = None
    duration: int | None = None
    start_time: int | None = None
    end_time: int | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    # Path of the call's recording file, when recordings are on (GATEWAY_RECORDINGS_DIR).
    recording: str | None = None
    # What was said on the call, turn by turn, when the bot keeps a conversation (agent).
    conversation: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallRecord:
        """The inverse of :meth:`as_dict` (unknown keys, e.g. from a newer version, ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["direction"] = Direction(values["direction"])
        values["state"] = CallState(values.get("state", CallState.NEW))
        values["errors"] = list(values.get("errors") or [])
        values["statuses"] = list(values.get("statuses") or [])
        values["conversation"] = list(values.get("conversation") or [])
        return cls(**values)
