"""Untrusted values, made safe for a log line: truncated and escaped.

Webhook bodies, Graph API error texts and API requests come from outside. Logged
in full, one 100 kB string writes 100 kB per line, and a newline or an escape
sequence in it forges or garbles log lines. :func:`clip` is the one helper every
log call uses for such values.
"""

from __future__ import annotations

import reprlib
from typing import Final

DEFAULT_LIMIT: Final = 120

# For non-strings: bounded depth and length, so a deeply nested or huge value
# costs no more than a short one.
_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = DEFAULT_LIMIT
_repr.maxother = DEFAULT_LIMIT
_repr.maxlong = 40


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    if "\udc80" <= char <= "\udcff":  # an undecodable byte (surrogateescape)
        return f"\\x{ord(char) - 0xDC00:02x}"
    # Control characters, lone surrogates, line and paragraph separators.
    return ascii(char)[1:-1]


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc) or type(exc).__name__
    except Exception:
        return f"<{type(exc).__name__}>"


def clip(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as at most about ``limit`` printable characters, for a log line.

    Non-printable characters (newlines, ANSI escapes, lone surrogates) come out
    as Python escapes; a longer text is cut and says how much was left out.
    """
    if isinstance(value, bytes | bytearray):
        text = bytes(value[: limit + 1]).decode("utf-8", "surrogateescape")
        size = len(value)
    elif isinstance(value, str):
        text, size = value[: limit + 1], len(value)
    elif isinstance(value, BaseException):
        text = _text_of(value)
        size = len(text)
    else:
        try:
            text = _repr.repr(value)
        except Exception:  # a hostile __repr__ must not break logging
            text = f"<{type(value).__name__}>"
        size = len(text)
    if size > limit:
        return "".join(map(_escape, text[:limit])) + f"…(+{size - limit})"
    if text.isprintable() and "\\" not in text:
        # Nothing to escape (the usual call id or reason): no per-character pass.
        # Every character _escape would change is a backslash or not printable.
        return text
    return "".join(map(_escape, text))
