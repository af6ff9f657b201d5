"""The conversation: the message history sent to the model, and its record for the call.

Two views of the same turns. :attr:`Conversation.messages` is what the next
Chat Completions request carries (system prompt, user and assistant turns, tool
calls and results). :attr:`Conversation.record` is what ``GET /calls/{id}``
returns: who said what and when, what was cut by the caller and what the model
had meant to say. An interrupted assistant turn is kept, in both, as the words
the caller actually heard, so the model knows where it was stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from .llm import ToolCall

MAX_RECORD_TEXT = 4000
"""Characters of one turn kept in the call record (the model's history is not cut)."""


class Conversation:
    """One call's history; ``record`` is the JSON-ready list kept with the call record."""

    def __init__(self, system_prompt: str, record: list[dict[str, Any]] | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        if system_prompt:
            self.messages.append({"role": "system", "content": system_prompt})
        self.record: list[dict[str, Any]] = [] if record is None else record

    def _log(self, role: str, text: str, **extra: Any) -> None:
        entry: dict[str, Any] = {
            "at": round(time.time(), 3),
            "role": role,
            "text": text[:MAX_RECORD_TEXT],
        }
        entry.update({k: v for k, v in extra.items() if v is not None})
        self.record.append(entry)

    def add_user(
        self, text: str, *, source: str = "speech", confidence: float | None = None
    ) -> None:
        """A caller turn (``source``: ``speech`` or ``dtmf``)."""
        self.messages.append({"role": "user", "content": text})
        self._log(
            "user",
            text,
            source=source,
            confidence=None if confidence is None else round(confidence, 3),
        )

    def add_assistant(
        self,
        heard: str,
        *,
        generated: str,
        interrupted: bool,
        tool_calls: Sequence[ToolCall] = (),
    ) -> None:
        """An assistant turn: what the caller heard, and what the model had generated."""
        message: dict[str, Any] = {"role": "assistant", "content": heard or None}
        if tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in tool_calls
            ]
        if heard or tool_calls:
            self.messages.append(message)
        self._log(
            "assistant",
            heard,
            interrupted=interrupted or None,
            generated=generated[:MAX_RECORD_TEXT] if interrupted and generated != heard else None,
            tool_calls=[{"name": c.name, "arguments": c.arguments[:500]} for c in tool_calls]
            or None,
        )

    def add_tool_result(self, call: ToolCall, result: str) -> None:
        """What a tool returned, for the model to read."""
        self.messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        self._log("tool", result, name=call.name)

    def add_event(self, text: str) -> None:
        """A note in the record only (apologies, time-outs), not sent to the model."""
        self._log("event", text)

    def dump(self) -> str:
        """The history as JSON (for logs and debugging)."""
        return json.dumps(self.messages, ensure_ascii=False)
