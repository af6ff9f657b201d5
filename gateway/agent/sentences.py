"""Cutting a stream of LLM tokens into sentences to speak, as soon as each is complete.

The first sentence decides how soon the caller hears anything, so a sentence
ends at ``.``, ``!``, ``?`` or ``;`` followed by a space or a line break,
except after common abbreviations, initials and inside numbers ("3.5"). A very
long run without an end is cut at a comma or, failing that, a space, so TTS
never waits for a paragraph.
"""

from __future__ import annotations

import re
from typing import Final

_END = re.compile(r"[.!?;]+[\"')\]]*(?=\s)|\n+")
_ABBREVIATIONS: Final = frozenset(
    "mr mrs ms dr prof st sr jr vs etc e.g i.e approx no tel dept inc ltd co".split()
)
MAX_CHARS: Final = 180
"""A sentence longer than this is cut at a comma (or space) to start speaking."""
MIN_CHARS: Final = 2
"""Shorter pieces ("1.", "-") are joined to the next sentence."""


class SentenceSplitter:
    """Feed text deltas; get back the sentences they completed."""

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, delta: str) -> list[str]:
        """Add ``delta``; return the complete sentences (stripped, non-empty)."""
        self._buf += delta
        out: list[str] = []
        start = 0
        for match in _END.finditer(self._buf):
            end = match.end()
            piece = self._buf[start:end].strip()
            if match.group().startswith(".") and _abbreviation(self._buf[start : match.start()]):
                continue
            if len(piece) < MIN_CHARS:
                continue
            out.append(piece)
            start = end
        self._buf = self._buf[start:]
        while len(self._buf) > MAX_CHARS:
            cut = self._buf.rfind(", ", 0, MAX_CHARS)
            if cut < MAX_CHARS // 3:
                cut = self._buf.rfind(" ", 0, MAX_CHARS)
            if cut <= 0:
                cut = MAX_CHARS
            out.append(self._buf[: cut + 1].strip())
            self._buf = self._buf[cut + 1 :]
        return out

    def flush(self) -> str:
        """The text left over at the end of the stream (may be empty)."""
        rest, self._buf = self._buf.strip(), ""
        return rest


def _abbreviation(text: str) -> bool:
    words = text.split()
    if not words:
        return False
    word = words[-1].lower().lstrip("(\"'")
    # A single letter ("J. Smith") or a known abbreviation; a number keeps going ("3.").
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())
