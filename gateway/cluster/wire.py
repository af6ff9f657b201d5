"""Webhook events as JSON, for handing them from one worker to another through Redis."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from ..events import (
    CallConnect,
    CallErrorInfo,
    CallStatus,
    CallTerminate,
    Contact,
    Direction,
    Event,
    PermissionReply,
)

_TYPES: dict[str, type[Any]] = {
    "connect": CallConnect,
    "terminate": CallTerminate,
    "status": CallStatus,
    "permission": PermissionReply,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


def encode_event(event: Event) -> str:
    """One event as a JSON text (its type under ``"type"``)."""
    return json.dumps({"type": _NAMES[type(event)], **asdict(event)}, separators=(",", ":"))


def decode_event(text: str | bytes) -> Event:
    """The inverse of :func:`encode_event`; ValueError when ``text`` is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("type") not in _TYPES:
        raise ValueError("not an encoded event")
    cls = _TYPES[data.pop("type")]
    if data.get("direction") is not None:
        data["direction"] = Direction(data["direction"])
    if cls is CallConnect and data.get("contact") is not None:
        data["contact"] = Contact(**data["contact"])
    if cls is CallTerminate:
        data["errors"] = tuple(CallErrorInfo(**e) for e in data.get("errors") or ())
    event: Event = cls(**data)
    return event
