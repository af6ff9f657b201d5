"""Webhook events to JSON text and back, for the journal (any store implementation)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..errors import StoreError
from ..events import (
    CallConnect,
    CallErrorInfo,
    CallStatus,
    CallTerminate,
    Contact,
    Direction,
    Event,
    PermissionReply,
    event_key,
)

_KINDS: dict[str, type[Any]] = {
    "connect": CallConnect,
    "terminate": CallTerminate,
    "status": CallStatus,
    "permission": PermissionReply,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def dedupe_key(event: Event) -> str:
    """The text key two deliveries of the same event share (see :func:`events.event_key`)."""
    return json.dumps(event_key(event), separators=(",", ":"))


def encode_event(event: Event) -> str:
    """JSON text of ``event``, tagged with its kind."""
    body = dataclasses.asdict(event)
    body["kind"] = _KIND_OF[type(event)]
    return json.dumps(body, separators=(",", ":"))


def decode_event(text: str) -> Event:
    """The event :func:`encode_event` wrote; StoreError if it cannot be read."""
    try:
        body = json.loads(text)
        cls = _KINDS[body.pop("kind")]
        if body.get("direction") is not None:
            body["direction"] = Direction(body["direction"])
        if cls is CallConnect and body.get("contact") is not None:
            body["contact"] = Contact(**body["contact"])
        if cls is CallTerminate:
            body["errors"] = tuple(CallErrorInfo(**e) for e in body.get("errors") or ())
        event: Event = cls(**body)
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"unreadable journal entry: {exc!r}") from None
    return event
