"""The terminate webhook the sandbox's phones post, against the contract's shape.

``../shared/whatsapp-calling.md``, terminate: ``calls: [{"id", "from", "to", "event":
"terminate", "direction", "timestamp", "status": "COMPLETED" | "FAILED", "start_time",
"end_time", "duration" (only when answered), "biz_opaque_callback_data"?}]``, in the
``calls`` change of a ``whatsapp_business_account`` envelope. Both phones (the simulated
user's, :mod:`gateway.sandbox.user_call`, and the browser's,
:mod:`gateway.sandbox.browser_call`) build it with :func:`payloads.call_ended`.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.events import CallTerminate, Direction
from gateway.sandbox import payloads
from gateway.webhooks import parse_payload

USER = "15551230001"
BUSINESS = "15550783881"
PHONE_NUMBER_ID = "106540352242922"

# The contract's keys: always, and only when the call was answered.
ALWAYS = {"id", "from", "to", "event", "direction", "timestamp", "status"}
ANSWERED = {"start_time", "end_time", "duration"}


def _the_call(change: dict[str, Any]) -> dict[str, Any]:
    """The one call of a ``calls`` change, its envelope checked against the contract."""
    assert change["field"] == "calls"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"] == {
        "display_phone_number": BUSINESS,
        "phone_number_id": PHONE_NUMBER_ID,
    }
    assert "errors" not in value
    (call,) = value["calls"]
    assert isinstance(call, dict)
    return call


def _parsed(change: dict[str, Any]) -> CallTerminate:
    """What the gateway's webhook parser makes of the change."""
    events, problems = parse_payload(payloads.envelope([change]))
    assert problems == []
    (event,) = events
    assert isinstance(event, CallTerminate)
    return event


def test_an_answered_call_the_user_placed_ends_completed_from_the_user() -> None:
    before = int(time.time())
    change = payloads.call_ended(
        call_id="wacid.answered",
        user=USER,
        business=BUSINESS,
        phone_number_id=PHONE_NUMBER_ID,
        direction="USER_INITIATED",
        accepted_at=time.monotonic() - 7.5,  # answered 7.5 s ago
    )
    after = int(time.time())
    call = _the_call(change)
    assert set(call) == ALWAYS | ANSWERED
    assert call["id"] == "wacid.answered"
    assert (call["from"], call["to"]) == (USER, BUSINESS)
    assert (call["event"], call["direction"], call["status"]) == (
        "terminate",
        "USER_INITIATED",
        "COMPLETED",
    )
    # Times are strings of Unix seconds, as Meta sends them; duration a number.
    start, end = int(call["start_time"]), int(call["end_time"])
    assert (call["start_time"], call["end_time"]) == (str(start), str(end))
    assert before <= end <= after
    assert call["duration"] == end - start >= 7
    assert before <= int(call["timestamp"]) <= after

    event = _parsed(change)
    assert (event.call_id, event.from_, event.to) == ("wacid.answered", USER, BUSINESS)
    assert event.phone_number_id == PHONE_NUMBER_ID
    assert event.direction is Direction.USER_INITIATED
    assert event.status == "COMPLETED"
    assert (event.start_time, event.end_time, event.duration) == (start, end, end - start)
    assert event.biz_opaque_callback_data is None and event.errors == ()


def test_a_business_call_never_answered_fails_from_the_business_with_its_data() -> None:
    change = payloads.call_ended(
        call_id="wacid.unanswered",
        user=USER,
        business=BUSINESS,
        phone_number_id=PHONE_NUMBER_ID,
        direction="BUSINESS_INITIATED",
        accepted_at=None,
        biz_opaque_callback_data="order-7",
    )
    call = _the_call(change)
    # No start, end or duration: the contract has them only when answered.
    assert set(call) == ALWAYS | {"biz_opaque_callback_data"}
    assert (call["from"], call["to"]) == (BUSINESS, USER)
    assert (call["direction"], call["status"]) == ("BUSINESS_INITIATED", "FAILED")
    assert call["biz_opaque_callback_data"] == "order-7"

    event = _parsed(change)
    assert (event.from_, event.to) == (BUSINESS, USER)
    assert event.direction is Direction.BUSINESS_INITIATED
    assert event.status == "FAILED"
    assert (event.start_time, event.end_time, event.duration) == (None, None, None)
    assert event.biz_opaque_callback_data == "order-7"


def test_an_answered_business_call_ends_completed_from_the_business() -> None:
    change = payloads.call_ended(
        call_id="wacid.outbound",
        user=USER,
        business=BUSINESS,
        phone_number_id=PHONE_NUMBER_ID,
        direction="BUSINESS_INITIATED",
        accepted_at=time.monotonic(),
    )
    call = _the_call(change)
    assert set(call) == ALWAYS | ANSWERED
    assert (call["from"], call["to"], call["status"]) == (BUSINESS, USER, "COMPLETED")
    assert call["duration"] == int(call["end_time"]) - int(call["start_time"]) >= 0
