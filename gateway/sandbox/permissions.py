"""The sandbox's call-permission store, with the contract's limits.

A business may call a user only with permission. Requests are limited to 1 per
24 h and 2 per 7 days per user; 4 unanswered business calls in a row revoke a
permission; a temporary permission expires after 7 days.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

DAY = 24 * 3600
TEMPORARY_PERMISSION_SECONDS = 7 * DAY
UNANSWERED_LIMIT = 4
CALLS_PER_DAY = 100


@dataclass
class _UserPermission:
    status: str = "no_permission"  # no_permission | temporary | permanent
    expiration_time: int | None = None
    requests: list[float] = field(default_factory=list)
    unanswered_in_a_row: int = 0
    connected_calls: list[float] = field(default_factory=list)


class PermissionStore:
    """Per-user permission state; ``clock`` is injectable so tests can move time."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.time
        self._users: dict[str, _UserPermission] = {}

    def _user(self, wa_id: str) -> _UserPermission:
        user = self._users.setdefault(wa_id, _UserPermission())
        now = self._clock()
        if user.status == "temporary" and user.expiration_time and now >= user.expiration_time:
            user.status, user.expiration_time = "no_permission", None
        return user

    def grant(self, wa_id: str, *, permanent: bool = False) -> None:
        """The user accepted a request (or the test says they did)."""
        user = self._user(wa_id)
        user.unanswered_in_a_row = 0
        if permanent:
            user.status, user.expiration_time = "permanent", None
        else:
            user.status = "temporary"
            user.expiration_time = int(self._clock()) + TEMPORARY_PERMISSION_SECONDS

    def revoke(self, wa_id: str) -> None:
        """Take the permission away."""
        user = self._user(wa_id)
        user.status, user.expiration_time = "no_permission", None

    def can_call(self, wa_id: str) -> bool:
        """Whether a business call to ``wa_id`` is allowed now."""
        return self._user(wa_id).status != "no_permission"

    def request_refusal(self, wa_id: str) -> str | None:
        """Why a permission request may not be sent now (None when it may)."""
        user = self._user(wa_id)
        now = self._clock()
        recent = [t for t in user.requests if now - t < 7 * DAY]
        if any(now - t < DAY for t in recent):
            return "1 call permission request per user per 24 hours"
        if len(recent) >= 2:
            return "2 call permission requests per user per 7 days"
        return None

    def record_request(self, wa_id: str) -> None:
        """A request was sent."""
        self._user(wa_id).requests.append(self._clock())

    def record_call(self, wa_id: str, *, answered: bool) -> None:
        """A business call ended; 4 unanswered in a row revoke the permission."""
        user = self._user(wa_id)
        if answered:
            user.unanswered_in_a_row = 0
            user.connected_calls.append(self._clock())
            return
        user.unanswered_in_a_row += 1
        if user.unanswered_in_a_row >= UNANSWERED_LIMIT:
            user.status, user.expiration_time = "no_permission", None

    def connected_calls_today(self, wa_id: str) -> int:
        """Connected business calls to this user in the last 24 h."""
        now = self._clock()
        return sum(1 for t in self._user(wa_id).connected_calls if now - t < DAY)

    def daily_limit_resets_at(self, wa_id: str) -> int | None:
        """When a capped user may be called again (None while under the cap)."""
        now = self._clock()
        recent = sorted(t for t in self._user(wa_id).connected_calls if now - t < DAY)
        if len(recent) < CALLS_PER_DAY:
            return None
        return int(recent[-CALLS_PER_DAY] + DAY)

    def as_graph(self, wa_id: str) -> dict[str, object]:
        """The ``GET call_permissions`` body for this user."""
        user = self._user(wa_id)
        now = self._clock()
        permission: dict[str, object] = {"status": user.status}
        if user.expiration_time:
            permission["expiration_time"] = user.expiration_time
        used_today = sum(1 for t in user.requests if now - t < DAY)
        return {
            "messaging_product": "whatsapp",
            "permission": permission,
            "actions": [
                {
                    "action_name": "send_call_permission_request",
                    "can_perform_action": self.request_refusal(wa_id) is None,
                    "limits": [
                        {"time_period": "PT24H", "max_allowed": 1, "current_usage": used_today},
                    ],
                },
                {
                    "action_name": "start_call",
                    "can_perform_action": self.can_call(wa_id),
                    "limits": [
                        {
                            "time_period": "PT24H",
                            "max_allowed": CALLS_PER_DAY,
                            "current_usage": self.connected_calls_today(wa_id),
                        }
                    ],
                },
            ],
        }
