"""A bot wrapped so the browser phone's timeline shows what it hears, says and does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..media.audio import SAMPLE_RATE
from ..pipeline.bot import Bot, CallControl, CallInfo, Interruption, PlaybackResult, Utterance
from .timeline import Timeline


@dataclass
class BotActivity:
    """What the bot on one browser call heard and did, as the phone observed it."""

    bot: str
    # Keys the gateway decoded from RTP (RFC 4733), with their durations in ms.
    dtmf: list[tuple[str, int]] = field(default_factory=list)
    utterances_ms: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    # What the bot did: "says '...'", "plays ...", "hangs up (...)".
    actions: list[str] = field(default_factory=list)
    # All of it in order: "hears an utterance (1.20 s)", "gets key 1", "says '...'".
    log: list[str] = field(default_factory=list)


class ObservedControl:
    """The bot's CallControl, reporting what the bot does to the phone's timeline."""

    def __init__(self, inner: CallControl, note: Callable[[str], None]) -> None:
        self._inner = inner
        self._note = note

    @property
    def info(self) -> CallInfo:
        return self._inner.info

    async def say(self, text: str, *, interruptible: bool = True) -> PlaybackResult:
        self._note(f"says {text!r}")
        return await self._inner.say(text, interruptible=interruptible)

    async def play(
        self, audio: np.ndarray | str | Path, *, interruptible: bool = True, label: str = ""
    ) -> PlaybackResult:
        seconds = f" ({len(audio) / SAMPLE_RATE:.1f} s)" if isinstance(audio, np.ndarray) else ""
        self._note(f"plays {label or str(audio)}{seconds}")
        return await self._inner.play(audio, interruptible=interruptible, label=label)

    async def hangup(self, reason: str = "bot hung up") -> None:
        self._note(f"hangs up ({reason})")
        await self._inner.hangup(reason)

    def __getattr__(self, name: str) -> Any:
        # Everything else (listen, expect_input, what comes later) is the session's own.
        return getattr(self._inner, name)


class ObservedBot:
    """A bot wrapped so the page's timeline shows what it hears and says.

    Hooks it does not name pass through ``__getattr__`` with the wrapped control,
    so hooks added to the Bot protocol later still reach the bot.
    """

    def __init__(self, bot: Bot, activity: BotActivity, timeline: Timeline) -> None:
        self._bot = bot
        self._activity = activity
        self._timeline = timeline
        self._control: tuple[CallControl, CallControl] | None = None

    def _note(self, text: str, *, action: bool = True) -> None:
        if action:
            self._activity.actions.append(text)
        self._activity.log.append(text)
        self._timeline.add(f"bot {self._activity.bot} {text}")

    def _wrap(self, call: CallControl) -> CallControl:
        if self._control is None or self._control[0] is not call:
            # The wrapper forwards what it does not define (see __getattr__).
            self._control = (call, cast("CallControl", ObservedControl(call, self._note)))
        return self._control[1]

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        self._activity.utterances_ms.append(utterance.duration_ms)
        self._note(f"hears an utterance ({utterance.duration_ms / 1000:.2f} s)", action=False)
        await self._bot.on_utterance(self._wrap(call), utterance)

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        self._activity.keys.append(digit)
        self._note(f"gets key {digit}", action=False)
        await self._bot.on_dtmf(self._wrap(call), digit)

    async def on_barge_in(self, call: CallControl, interruption: Interruption) -> None:
        self._note(f"is interrupted ({interruption.label})", action=False)
        await self._bot.on_barge_in(self._wrap(call), interruption)

    def __getattr__(self, name: str) -> Any:
        hook = getattr(self._bot, name)
        if not name.startswith("on_") or not callable(hook):
            return hook

        async def forward(call: CallControl, *args: Any, **kwargs: Any) -> Any:
            return await hook(self._wrap(call), *args, **kwargs)

        return forward
