"""The signature Meta puts on every delivery: ``X-Hub-Signature-256``, HMAC-SHA256 of the body.

The app secret signs the raw body; the receiver checks it before reading a byte
of the payload, and the sandbox signs what it sends the same way.
"""

from __future__ import annotations

import hashlib
import hmac

from ..errors import WebhookError

__all__ = ["SIGNATURE_HEADER", "sign", "verify_signature"]

SIGNATURE_HEADER = "X-Hub-Signature-256"


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` header value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, app_secret: str) -> None:
    """Raise WebhookError(401) unless ``header`` signs ``body`` (constant-time compare)."""
    if not header:
        raise WebhookError(f"missing {SIGNATURE_HEADER} header", status=401)
    if not header.startswith("sha256="):
        raise WebhookError(f"{SIGNATURE_HEADER} must start with 'sha256='", status=401)
    if not hmac.compare_digest(sign(body, app_secret).encode(), header.strip().encode()):
        raise WebhookError("signature does not match the body", status=401)
