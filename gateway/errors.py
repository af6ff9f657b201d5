"""The gateway's one exception hierarchy.

Every error the gateway raises on purpose is a :class:`GatewayError`. Errors that
come from the Cloud API carry its numeric ``code`` so callers can branch on it
(``138006`` means "ask the user for call permission first").
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ConfigError(GatewayError):
    """A setting is missing or invalid (names the environment variable)."""


class WebhookError(GatewayError):
    """A webhook delivery was refused; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SDPError(GatewayError):
    """An SDP offer or answer cannot be used (the Cloud API answers these with code 100)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=100)


class AudioFileError(GatewayError):
    """An audio file cannot be read or is not usable audio."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CallError(GatewayError):
    """A call-level failure (unknown call, wrong state, capacity)."""


class BotError(GatewayError):
    """A bot plugin cannot be found or loaded."""


class TranscriptionError(GatewayError):
    """Speech to text failed (model, backend or endpoint)."""


class LLMError(GatewayError):
    """The language model could not be reached, answered with an error, or timed out.

    ``status`` is the HTTP status (0 when no answer came at all).
    """

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class StoreError(GatewayError):
    """The durable store cannot be opened, migrated, read or written."""


# Hints for the Cloud API codes that an operator can act on.
_HINTS: dict[int, str] = {
    100: "invalid parameter (for SDP, see the details)",
    138000: "calling is not enabled on this phone number",
    138001: "this user cannot be called",
    138002: "concurrent call limit reached",
    138003: "a call to this user is already ongoing",
    138004: "connection error",
    138005: "call rate limit reached",
    138006: "no call permission from this user: send a call permission request first",
    138007: "the business did not apply the SDP in time",
    138009: "call permission request limit reached",
    138012: "business-initiated call limit for this user reached",
    138013: "business-initiated calls are not available in this country",
}


class GraphAPIError(GatewayError):
    """The Graph API answered with an error (or could not be reached).

    ``status`` is the HTTP status (0 when the request never got an answer),
    ``code`` the Cloud API error code, ``details`` the ``error_data.details`` text.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: int | None = None,
        details: str | None = None,
        error_type: str | None = None,
        fbtrace_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.details = details
        self.error_type = error_type
        self.fbtrace_id = fbtrace_id
        self.body = body

    @property
    def hint(self) -> str | None:
        """What the code means for an operator, if it is one worth explaining."""
        return _HINTS.get(self.code) if self.code is not None else None

    @property
    def retryable(self) -> bool:
        """Whether repeating the same request may succeed (network, 429, 5xx)."""
        return self.status == 0 or self.status == 429 or self.status >= 500

    def __str__(self) -> str:
        parts = [f"Graph API error (HTTP {self.status}"]
        if self.code is not None:
            parts.append(f", code {self.code}")
        parts.append(f"): {self.message}")
        if self.details:
            parts.append(f" — {self.details}")
        if self.hint:
            parts.append(f" [{self.hint}]")
        return "".join(parts)


class UnavailableError(GatewayError):
    """A shared service the request needs (the cluster's Redis) cannot be reached now.

    Webhooks answered with this get a 503, so WhatsApp delivers them again later.
    """
