"""The sandbox's timeline: readable, timestamped events of the calls, for demos and debugging.

The sandbox and its phones add what they do; :class:`TimelineLogHandler` adds
the gateway's own log lines (call states, DTMF, bot turns) beside them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["GATEWAY_LOGGERS", "Timeline", "TimelineLogHandler"]


@dataclass
class Timeline:
    """Readable, timestamped events of the sandbox, for demos and debugging."""

    started: float = field(default_factory=time.monotonic)
    entries: list[tuple[float, str]] = field(default_factory=list)
    echo: Callable[[str], None] | None = None

    def add(self, text: str) -> None:
        """Record ``text`` now (and print it if an echo function is set)."""
        t = time.monotonic() - self.started
        self.entries.append((t, text))
        if self.echo is not None:
            self.echo(f"{t * 1000:8.0f} ms  {text}")


# The gateway loggers whose lines (call states, DTMF, bot turns) belong on a timeline.
GATEWAY_LOGGERS = ("gateway.calls", "gateway.pipeline.session", "gateway.agent.bot")


class TimelineLogHandler(logging.Handler):
    """Puts the gateway's own log lines on a sandbox timeline, from any thread."""

    def __init__(self, timeline: Timeline, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self.timeline = timeline
        self.loop = loop
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        """Add the line now on the loop's thread, else hand it to the loop."""
        text = "gateway: " + record.getMessage()
        if threading.get_ident() == self.thread:
            self.timeline.add(text)
        else:  # the timeline and its listeners live on the event loop
            self.loop.call_soon_threadsafe(self.timeline.add, text)
