"""Meta's checks on the business's call actions, as the fake Graph API makes them.

A ``connect`` (a business-initiated call) is checked against the request, the
user's call permission and the calls under way; the other actions against the
user's call as Meta keeps it (:class:`UserCallState`), which both phones of the
sandbox (the simulated user, the browser phone) answer with here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from .. import sdp
from ..errors import SDPError
from .parties import Callee, SandboxCall
from .permissions import PermissionStore

__all__ = ["UserCallState", "check_action", "check_answer", "connect_refusal"]


class UserCallState(StrEnum):
    """The call as the simulated phone sees it."""

    OFFERED = "OFFERED"
    PRE_ACCEPTED = "PRE_ACCEPTED"
    ACCEPTED = "ACCEPTED"
    ENDED = "ENDED"


def check_action(
    call_id: str, state: UserCallState, answer_sdp: str | None, action: str, body: dict[str, Any]
) -> str | None:
    """Meta's checks on a business action for a user's call; a reason when refused."""
    if state is UserCallState.ENDED:
        return f"call {call_id} has already ended"
    if action not in ("pre_accept", "accept"):
        return None
    session = body.get("session")
    if not isinstance(session, dict) or session.get("sdp_type") != "answer":
        return "session.sdp_type must be 'answer'"
    answer = session.get("sdp")
    if not isinstance(answer, str):
        return "session.sdp is required"
    if action == "accept" and answer_sdp is not None and answer != answer_sdp:
        return "the accept SDP must be identical to the pre_accept SDP"
    if action == "pre_accept" and state is not UserCallState.OFFERED:
        return f"cannot pre_accept a call in state {state}"
    return check_answer(answer)


def check_answer(answer: str) -> str | None:
    """Meta's checks on a business's SDP answer (contract, section 4); the reason if refused."""
    lines = sdp.lines(answer)
    if not answer.endswith("\r\n") or "\n" in answer.replace("\r\n", ""):
        return "SDP lines must end with CRLF"
    fingerprints = [line for line in lines if line.startswith("a=fingerprint:")]
    if len(fingerprints) != 1 or not fingerprints[0].startswith("a=fingerprint:sha-256 "):
        return "the answer must carry exactly one a=fingerprint:sha-256 line"
    if "a=setup:active" not in lines:
        return "the answer must carry a=setup:active"
    if "a=mid:audio" not in lines:
        return "the answer must keep a=mid:audio"
    return None


def connect_refusal(
    body: dict[str, Any],
    permissions: PermissionStore,
    users: Mapping[str, Callee],
    calls: Iterable[SandboxCall],
) -> tuple[int, str, str | None] | None:
    """Meta's checks on a business-initiated call, in the order it makes them.

    (code, message, details) of the first that fails, else None.
    """
    invalid = "(#100) Invalid parameter"
    to = body.get("to")
    session = body.get("session")
    if not isinstance(to, str) or not to:
        return 100, "(#100) The parameter to is required.", None
    if not isinstance(session, dict) or session.get("sdp_type") != "offer":
        return 100, invalid, "session.sdp_type must be 'offer'"
    offer = session.get("sdp")
    try:
        if not isinstance(offer, str):
            raise SDPError("session.sdp is required")
        sdp.validate_offer(offer)
        sdp.keep_fingerprint(offer)
    except SDPError as exc:
        return 100, invalid, f"SDP validation error: {exc.message}"
    callback = body.get("biz_opaque_callback_data")
    if callback is not None and (not isinstance(callback, str) or len(callback) > 512):
        return (
            100,
            invalid,
            "biz_opaque_callback_data must be a string of at most 512 characters",
        )
    if not permissions.can_call(to):
        return (
            138006,
            "No approved call permission from the recipient",
            "Call permission is required: send a call permission request to the user first.",
        )
    resets_at = permissions.daily_limit_resets_at(to)
    if resets_at is not None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resets_at))
        return (
            138012,
            "Business-initiated call limit reached for this user",
            f"The limit of connected calls to this user in 24 hours was reached; "
            f"it resets at {when}.",
        )
    user = users.get(to)
    if user is None:
        return 138001, "Receiver is unable to receive calls", None
    if any(c.user is user and c.direction == "BUSINESS_INITIATED" for c in calls):
        return 138003, "Duplicate call: a call to this user is ongoing", None
    return None
