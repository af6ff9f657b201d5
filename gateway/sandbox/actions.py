"""A user's call as Meta keeps it, and Meta's checks on the business's actions on it.

Both phones of the sandbox (the simulated user, the browser phone) answer the
fake Graph API's question "may the business do this to the call now?" here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from .. import sdp

__all__ = ["UserCallState", "check_action", "check_answer"]


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
