"""A delivery's body decoded as strict JSON.

What ``json.loads`` lets through but no delivery of Meta's holds (``NaN``, lone
UTF-16 surrogates, nesting deeper than the parser can go) is a WebhookError(400).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import WebhookError
from ..logsafe import clip

__all__ = ["decode_json"]

# Only a \uD800-\uDFFF escape can put a surrogate into a string json.loads returns.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _has_lone_surrogate(payload: Any) -> bool:
    # Iterative: the payload may be nested as deep as json.loads allows.
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def decode_json(body: bytes) -> Any:
    """Decode a delivery body as strict JSON; WebhookError(400) says why it is not.

    Stricter than ``json.loads``: no ``NaN``/``Infinity``, and no lone UTF-16
    surrogates (``"\\ud800"``), which are valid JSON escapes but not text: such a
    call id could never be sent back to the Graph API.
    """
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise WebhookError("body is nested too deeply") from None
    except ValueError as exc:  # also bad UTF-8 and numbers too long to convert
        raise WebhookError(f"body is not valid JSON: {clip(exc)}") from None
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(payload):
        raise WebhookError("body contains a lone UTF-16 surrogate (not valid Unicode)")
    return payload
