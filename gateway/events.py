"""Typed, frozen webhook events: what the Cloud API tells the gateway.

:func:`gateway.webhooks.parse.parse_payload` turns a delivery into a list of these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, is_dataclass
from enum import StrEnum
from typing import Any


class Direction(StrEnum):
    """Who placed the call."""

    USER_INITIATED = "USER_INITIATED"
    BUSINESS_INITIATED = "BUSINESS_INITIATED"


@dataclass(frozen=True)
class Contact:
    """The WhatsApp user on the other end."""

    wa_id: str
    name: str | None = None


@dataclass(frozen=True)
class CallErrorInfo:
    """One entry of a terminate webhook's ``errors`` (parsed leniently)."""

    code: int | None
    message: str | None = None
    details: str | None = None


@dataclass(frozen=True)
class CallConnect:
    """A ``connect`` event: an offer from a calling user, or the answer to our call."""

    call_id: str
    phone_number_id: str
    from_: str
    to: str
    direction: Direction
    sdp_type: str  # "offer" or "answer"
    sdp: str
    timestamp: int
    contact: Contact | None = None
    biz_opaque_callback_data: str | None = None
    deeplink_payload: str | None = None
    cta_payload: str | None = None


@dataclass(frozen=True)
class CallTerminate:
    """A ``terminate`` event: the call is over (``status`` is COMPLETED or FAILED)."""

    call_id: str
    phone_number_id: str
    from_: str
    to: str
    direction: Direction | None
    status: str
    timestamp: int
    start_time: int | None = None
    end_time: int | None = None
    duration: int | None = None
    biz_opaque_callback_data: str | None = None
    errors: tuple[CallErrorInfo, ...] = ()


@dataclass(frozen=True)
class CallStatus:
    """A ``statuses`` entry for a business-initiated call: RINGING, ACCEPTED or REJECTED."""

    call_id: str
    phone_number_id: str
    status: str
    timestamp: int
    recipient_id: str | None = None
    biz_opaque_callback_data: str | None = None


@dataclass(frozen=True)
class PermissionReply:
    """A user's answer to a call permission request (on the ``messages`` field)."""

    phone_number_id: str
    from_: str
    accepted: bool
    permanent: bool
    timestamp: int
    context_id: str | None = None
    expiration_timestamp: int | None = None
    response_source: str | None = None


Event = CallConnect | CallTerminate | CallStatus | PermissionReply


def event_key(event: Event) -> tuple[str, ...]:
    """Identity used to drop duplicate deliveries of the same event."""
    if isinstance(event, CallConnect):
        return ("connect", event.call_id, event.sdp_type)
    if isinstance(event, CallTerminate):
        return ("terminate", event.call_id)
    if isinstance(event, CallStatus):
        return ("status", event.call_id, event.status)
    return ("permission", event.from_, event.context_id or "", str(event.timestamp))


# --- events as JSON text (the store's journal, the cluster's Redis streams) ----------

_TYPES: dict[str, type[Any]] = {
    "connect": CallConnect,
    "terminate": CallTerminate,
    "status": CallStatus,
    "permission": PermissionReply,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


def encode_event(event: Event) -> str:
    """One event as a JSON text (its type under ``"type"``)."""
    # The fields as they are (nested dataclasses through ``_fields``), not
    # ``dataclasses.asdict``, which deep-copies every value first: the same text.
    return json.dumps(
        {"type": _NAMES[type(event)], **event.__dict__}, separators=(",", ":"), default=_fields
    )


def _fields(value: object) -> dict[str, Any]:
    # Contact and CallErrorInfo, inside an event.
    if is_dataclass(value) and not isinstance(value, type):
        return dict(value.__dict__)
    raise TypeError(f"cannot encode {type(value).__name__}")


def decode_event(text: str | bytes) -> Event:
    """The inverse of :func:`encode_event`; ValueError when ``text`` is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("type") not in _TYPES:
        raise ValueError("not an encoded event")
    cls = _TYPES[data.pop("type")]
    try:
        if data.get("direction") is not None:
            data["direction"] = Direction(data["direction"])
        if cls is CallConnect and data.get("contact") is not None:
            data["contact"] = Contact(**data["contact"])
        if cls is CallTerminate:
            data["errors"] = tuple(CallErrorInfo(**e) for e in data.get("errors") or ())
        event: Event = cls(**data)
    except TypeError as exc:  # missing or unknown fields
        raise ValueError(f"not an encoded event: {exc}") from None
    return event
