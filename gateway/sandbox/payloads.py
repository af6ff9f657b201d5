"""Webhook bodies exactly as the Cloud API sends them (see shared/whatsapp-calling.md)."""

from __future__ import annotations

import time
from typing import Any

WABA_ID = "102290129340398"


def _now() -> str:
    return str(int(time.time()))


def envelope(changes: list[dict[str, Any]], waba_id: str = WABA_ID) -> dict[str, Any]:
    """The ``whatsapp_business_account`` envelope around one entry of changes."""
    return {"object": "whatsapp_business_account", "entry": [{"id": waba_id, "changes": changes}]}


def _contacts(user: str, user_name: str) -> list[dict[str, Any]]:
    return [{"profile": {"name": user_name}, "wa_id": user}]


def _change(field: str, phone_number_id: str, business: str, **items: Any) -> dict[str, Any]:
    """One change of ``field`` (``calls``, ``messages``) to the business's number: its
    value names the product and the number, then holds ``items``."""
    metadata = {"display_phone_number": business, "phone_number_id": phone_number_id}
    return {
        "field": field,
        "value": {"messaging_product": "whatsapp", "metadata": metadata, **items},
    }


def connect_offer(
    *,
    call_id: str,
    user: str,
    user_name: str,
    business: str,
    phone_number_id: str,
    sdp: str,
) -> dict[str, Any]:
    """A ``calls`` change: a user calls the business with an SDP offer."""
    return _connect(call_id, user, user_name, business, phone_number_id, "USER_INITIATED", sdp)


def connect_answer(
    *,
    call_id: str,
    user: str,
    user_name: str,
    business: str,
    phone_number_id: str,
    sdp: str,
    biz_opaque_callback_data: str | None = None,
) -> dict[str, Any]:
    """A ``calls`` change: the user answered a business-initiated call."""
    return _connect(
        call_id,
        user,
        user_name,
        business,
        phone_number_id,
        "BUSINESS_INITIATED",
        sdp,
        biz_opaque_callback_data,
    )


def _connect(
    call_id: str,
    user: str,
    user_name: str,
    business: str,
    phone_number_id: str,
    direction: str,
    sdp: str,
    biz_opaque_callback_data: str | None = None,
) -> dict[str, Any]:
    """The ``connect`` of a call: the caller's offer, or the business's callee's answer."""
    from_, to = _parties(direction, user, business)
    call: dict[str, Any] = {
        "id": call_id,
        "from": from_,
        "to": to,
        "event": "connect",
        "timestamp": _now(),
        "direction": direction,
        "session": {"sdp_type": "offer" if from_ == user else "answer", "sdp": sdp},
    }
    if biz_opaque_callback_data is not None:
        call["biz_opaque_callback_data"] = biz_opaque_callback_data
    return _change(
        "calls", phone_number_id, business, contacts=_contacts(user, user_name), calls=[call]
    )


def _parties(direction: str, user: str, business: str) -> tuple[str, str]:
    """(from, to) of a call's events: who placed the call, and who was called."""
    return (user, business) if direction == "USER_INITIATED" else (business, user)


def terminate(
    *,
    call_id: str,
    from_: str,
    to: str,
    business: str,
    phone_number_id: str,
    direction: str,
    status: str = "COMPLETED",
    start_time: int | None = None,
    end_time: int | None = None,
    biz_opaque_callback_data: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``calls`` change: the call is over."""
    call: dict[str, Any] = {
        "id": call_id,
        "from": from_,
        "to": to,
        "event": "terminate",
        "direction": direction,
        "timestamp": _now(),
        "status": status,
    }
    if start_time is not None:
        end = end_time or int(time.time())
        call.update(start_time=str(start_time), end_time=str(end), duration=end - start_time)
    if biz_opaque_callback_data is not None:
        call["biz_opaque_callback_data"] = biz_opaque_callback_data
    if errors:
        return _change("calls", phone_number_id, business, calls=[call], errors=errors)
    return _change("calls", phone_number_id, business, calls=[call])


def call_ended(
    *,
    call_id: str,
    user: str,
    business: str,
    phone_number_id: str,
    direction: str,
    accepted_at: float | None,
    biz_opaque_callback_data: str | None = None,
) -> dict[str, Any]:
    """The ``terminate`` change Meta posts when a sandbox phone's call ends now.

    From ``user`` to ``business`` on a call the user placed (``USER_INITIATED``), the
    other way on one the business placed. ``accepted_at`` is when the call was accepted,
    on the :func:`time.monotonic` clock: then the call is COMPLETED, with its start, end
    and duration; never accepted (None), it FAILED, without them.
    """
    from_, to = _parties(direction, user, business)
    now = int(time.time())
    start = None if accepted_at is None else now - int(time.monotonic() - accepted_at)
    return terminate(
        call_id=call_id,
        from_=from_,
        to=to,
        business=business,
        phone_number_id=phone_number_id,
        direction=direction,
        status="FAILED" if start is None else "COMPLETED",
        start_time=start,
        end_time=None if start is None else now,
        biz_opaque_callback_data=biz_opaque_callback_data,
    )


def call_status(
    *,
    call_id: str,
    status: str,
    recipient: str,
    business: str,
    phone_number_id: str,
    biz_opaque_callback_data: str | None = None,
) -> dict[str, Any]:
    """A ``calls`` change carrying a RINGING/ACCEPTED/REJECTED status."""
    entry: dict[str, Any] = {
        "id": call_id,
        "timestamp": _now(),
        "type": "call",
        "status": status,
        "recipient_id": recipient,
    }
    if biz_opaque_callback_data is not None:
        entry["biz_opaque_callback_data"] = biz_opaque_callback_data
    return _change("calls", phone_number_id, business, statuses=[entry])


def permission_reply(
    *,
    user: str,
    user_name: str,
    business: str,
    phone_number_id: str,
    context_id: str,
    accept: bool,
    permanent: bool = False,
    expiration_timestamp: int | None = None,
) -> dict[str, Any]:
    """A ``messages`` change: the user's answer to a call permission request."""
    reply: dict[str, Any] = {
        "response": "accept" if accept else "reject",
        "is_permanent": permanent,
        "response_source": "user_action",
    }
    if expiration_timestamp is not None:
        reply["expiration_timestamp"] = str(expiration_timestamp)
    message = {
        "context": {"from": business, "id": context_id},
        "from": user,
        "id": f"wamid.{context_id}r",
        "timestamp": _now(),
        "type": "interactive",
        "interactive": {"type": "call_permission_reply", "call_permission_reply": reply},
    }
    return _change(
        "messages",
        phone_number_id,
        business,
        contacts=_contacts(user, user_name),
        messages=[message],
    )


def graph_error(
    code: int, message: str, *, details: str | None = None, error_type: str = "OAuthException"
) -> dict[str, Any]:
    """A Graph API error body."""
    error: dict[str, Any] = {
        "message": message,
        "type": error_type,
        "code": code,
        "fbtrace_id": "AbCdEfGhIjKlMnOp",
    }
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": error}
