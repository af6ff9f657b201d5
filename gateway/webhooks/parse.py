"""A decoded delivery parsed into :mod:`gateway.events` objects.

Everything in a delivery is untrusted: each field is checked for its type and
shape, a bad part is reported by where it is, and the good parts of the same
delivery are still returned. Only ``calls`` and ``messages`` changes matter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..errors import WebhookError
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
from ..logsafe import clip

__all__ = ["MAX_CALL_ID_CHARS", "parse_payload"]

# The webhook's logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.webhooks")

# Call ids are ASCII tokens ("wacid." and base64); anything else is not from Meta.
MAX_CALL_ID_CHARS = 256
# Numbers outside this range are junk (and would not fit a database column).
_INT64_MAX = 2**63 - 1


class _Shape(Exception):
    """A part of the payload has the wrong shape; the message says where."""


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _Shape(f"{where}.{key} must be a non-empty string")
    return value


def _call_id(obj: dict[str, Any], where: str) -> str:
    value = _str(obj, "id", where)
    if (
        len(value) > MAX_CALL_ID_CHARS
        or not value.isascii()
        or not value.isprintable()
        or " " in value
    ):
        raise _Shape(f"{where}.id is not a call id: {clip(value, 40)}")
    return value


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _text(obj: dict[str, Any], key: str) -> str:
    # Lenient: a field that is not a string is treated as absent (never str() a
    # structure from outside: it may be huge or nested a thousand deep).
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _opt_int(value: Any) -> int | None:
    # Unix seconds and durations come as strings or numbers; junk, Infinity, NaN
    # and numbers too big for 64 bits count as absent.
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if -_INT64_MAX <= number <= _INT64_MAX else None


def _ts(value: Any) -> int:
    return _opt_int(value) or 0


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Shape(f"{where} must be an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Shape(f"{where} must be a list")
    return value


def _direction(value: Any) -> Direction | None:
    if not isinstance(value, str):
        return None
    try:
        return Direction(value)
    except ValueError:
        return None


def _items(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    return _list(value, f"{where}.{key}")


def _call_errors(value: Any) -> tuple[CallErrorInfo, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for err in value:
        if not isinstance(err, dict):
            continue
        data = err.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        out.append(
            CallErrorInfo(
                code=_opt_int(err.get("code")),
                message=_opt_str(err, "message") or _opt_str(err, "title"),
                details=details if isinstance(details, str) else None,
            )
        )
    return tuple(out)


def _parse_call(call: dict[str, Any], value: dict[str, Any], pnid: str, where: str) -> Event | None:
    call_id = _call_id(call, where)
    kind = call.get("event")
    if kind == "connect":
        session = call.get("session")
        if not isinstance(session, dict):
            # Legacy payloads carried the SDP here only.
            connection = call.get("connection")
            webrtc = connection.get("webrtc") if isinstance(connection, dict) else None
            session = {"sdp": webrtc.get("sdp") if isinstance(webrtc, dict) else None}
        sdp = session.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise _Shape(f"{where}.session.sdp must be a non-empty string (call {call_id})")
        direction = _direction(call.get("direction")) or Direction.USER_INITIATED
        sdp_type = session.get("sdp_type") or (
            "answer" if direction is Direction.BUSINESS_INITIATED else "offer"
        )
        if not isinstance(sdp_type, str) or sdp_type not in ("offer", "answer"):
            raise _Shape(f"{where}.session.sdp_type must be offer or answer (call {call_id})")
        contact = None
        contacts = value.get("contacts")
        if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict):
            profile = contacts[0].get("profile")
            name = profile.get("name") if isinstance(profile, dict) else None
            wa_id = contacts[0].get("wa_id")
            if isinstance(wa_id, str):
                contact = Contact(wa_id=wa_id, name=name if isinstance(name, str) else None)
        return CallConnect(
            call_id=call_id,
            phone_number_id=pnid,
            from_=_text(call, "from"),
            to=_text(call, "to"),
            direction=direction,
            sdp_type=sdp_type,
            sdp=sdp,
            timestamp=_ts(call.get("timestamp")),
            contact=contact,
            biz_opaque_callback_data=_opt_str(call, "biz_opaque_callback_data"),
            deeplink_payload=_opt_str(value, "deeplink_payload"),
            cta_payload=_opt_str(value, "cta_payload"),
        )
    if kind == "terminate":
        return CallTerminate(
            call_id=call_id,
            phone_number_id=pnid,
            from_=_text(call, "from"),
            to=_text(call, "to"),
            direction=_direction(call.get("direction")),
            status=_text(call, "status").upper(),
            timestamp=_ts(call.get("timestamp")),
            start_time=_opt_int(call.get("start_time")),
            end_time=_opt_int(call.get("end_time")),
            duration=_opt_int(call.get("duration")),
            biz_opaque_callback_data=_opt_str(call, "biz_opaque_callback_data"),
            errors=_call_errors(call.get("errors") or value.get("errors")),
        )
    log.info("ignoring call event %s for call %s", clip(kind, 40), call_id)
    return None


def _parse_calls_value(value: dict[str, Any], pnid: str, where: str) -> Iterable[Event | _Shape]:
    try:
        calls = _items(value, "calls", where)
        statuses = _items(value, "statuses", where)
    except _Shape as exc:
        yield exc
        return
    for i, call in enumerate(calls):
        try:
            event = _parse_call(
                _dict(call, f"{where}.calls[{i}]"), value, pnid, f"{where}.calls[{i}]"
            )
        except _Shape as exc:
            yield exc
            continue
        if event is not None:
            yield event
    for i, status in enumerate(statuses):
        w = f"{where}.statuses[{i}]"
        try:
            status = _dict(status, w)
            if status.get("type", "call") != "call":
                continue
            yield CallStatus(
                call_id=_call_id(status, w),
                phone_number_id=pnid,
                status=_str(status, "status", w).upper(),
                timestamp=_ts(status.get("timestamp")),
                recipient_id=_opt_str(status, "recipient_id"),
                biz_opaque_callback_data=_opt_str(status, "biz_opaque_callback_data"),
            )
        except _Shape as exc:
            yield exc


def _parse_messages_value(value: dict[str, Any], pnid: str) -> Iterable[Event]:
    # Only permission replies matter here; every other message is someone else's business.
    messages = value.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        interactive = message.get("interactive")
        if not isinstance(interactive, dict) or interactive.get("type") != "call_permission_reply":
            continue
        reply = interactive.get("call_permission_reply")
        if not isinstance(reply, dict):
            continue
        context = message.get("context")
        yield PermissionReply(
            phone_number_id=pnid,
            from_=_text(message, "from"),
            accepted=reply.get("response") == "accept",
            permanent=bool(reply.get("is_permanent", False)),
            timestamp=_ts(message.get("timestamp")),
            context_id=_opt_str(context, "id") if isinstance(context, dict) else None,
            expiration_timestamp=_opt_int(reply.get("expiration_timestamp")),
            response_source=_opt_str(reply, "response_source"),
        )


def parse_payload(payload: Any) -> tuple[list[Event], list[str]]:
    """Parse a decoded delivery into events, plus a list of what was malformed.

    Unknown fields and other ``field`` values are ignored. Envelope-level damage
    raises WebhookError(400); a bad entry inside a good envelope is reported in the
    second list while the good ones are still returned.
    """
    try:
        root = _dict(payload, "body")
        entries = _list(root.get("entry"), "entry")
    except _Shape as exc:
        raise WebhookError(str(exc)) from None
    events: list[Event] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        try:
            changes = _list(_dict(entry, f"entry[{i}]").get("changes"), f"entry[{i}].changes")
        except _Shape as exc:
            problems.append(str(exc))
            continue
        for j, change in enumerate(changes):
            where = f"entry[{i}].changes[{j}]"
            try:
                change = _dict(change, where)
                field = change.get("field")
                if field not in ("calls", "messages"):
                    continue
                value = _dict(change.get("value"), f"{where}.value")
                metadata = value.get("metadata")
                pnid = _text(metadata, "phone_number_id") if isinstance(metadata, dict) else ""
            except _Shape as exc:
                problems.append(str(exc))
                continue
            if field == "messages":
                events.extend(_parse_messages_value(value, pnid))
                continue
            for item in _parse_calls_value(value, pnid, f"{where}.value"):
                if isinstance(item, _Shape):
                    problems.append(str(item))
                else:
                    events.append(item)
    return events, problems
