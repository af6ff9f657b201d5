"""The failures the fake Graph API can be told to make (:meth:`CloudAPISandbox.fail_next`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Failure", "InjectedFailure"]


class Failure(StrEnum):
    """How the fake Graph API fails a request (:meth:`CloudAPISandbox.fail_next`)."""

    GRAPH_ERROR = "graph_error"
    """Meta's error body: ``{"error": {"message", "type", "code", ...}}``."""
    TITLE_ONLY = "title_only"
    """An error body with only ``code`` and ``title``, as some real ones have."""
    MALFORMED_JSON = "malformed_json"
    """A body that is not JSON (a proxy's HTML error page)."""
    TIMEOUT = "timeout"
    """No answer for ``delay`` seconds, then an error: the client should have given up."""
    DISCONNECT = "disconnect"
    """The connection closed without an answer."""


@dataclass
class InjectedFailure:
    """One failure queued by :meth:`CloudAPISandbox.fail_next` and how often it is left."""

    status: int
    code: int
    message: str
    details: str | None
    times: int
    how: Failure = Failure.GRAPH_ERROR
    retry_after: float | None = None
    delay: float = 0.0
