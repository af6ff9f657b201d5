"""The bot plugin interface: what a bot is told, and how it acts on a call.

A bot is any object with the :class:`Bot` methods (subclass :class:`BaseBot` to
get no-op defaults). The gateway calls them one at a time per call, in order;
the bot acts through the :class:`CallControl` it is handed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..events import Direction


@dataclass(frozen=True)
class CallInfo:
    """Who is on the call and how it came about."""

    call_id: str
    direction: Direction
    caller: str  # the user's wa_id
    caller_name: str | None = None
    biz_opaque_callback_data: str | None = None


@dataclass(frozen=True, eq=False)
class Utterance:
    """One turn of caller speech, as the VAD closed it (16 kHz mono int16)."""

    pcm: np.ndarray
    started_ms: int
    ended_ms: int

    @property
    def duration_ms(self) -> int:
        """Length of the utterance's audio."""
        return len(self.pcm) * 1000 // 16000


FRAME_MS = 20  # every frame played to the caller is 20 ms of audio


@dataclass(frozen=True)
class PlaybackResult:
    """How a ``say`` or ``play`` went.

    ``frames_played`` is what the caller heard: frames held back while playout
    was paused for a sound that turned out not to be speech are not counted
    until they were sent.
    """

    frames_played: int
    frames_total: int
    interrupted: bool
    pauses: tuple[tuple[int, int], ...] = ()
    """Each false interruption: (frames played before it, frames of silence it lasted)."""

    @property
    def played_ms(self) -> int:
        """How much of the audio reached the caller."""
        return self.frames_played * FRAME_MS


@dataclass(frozen=True)
class Interruption:
    """The caller talked over the bot; this much of what it was saying was cut."""

    label: str  # the text being said, or the name of the audio being played
    frames_played: int  # sent before playout stopped: what the caller heard
    frames_dropped: int

    @property
    def played_ms(self) -> int:
        """How much of the interrupted audio the caller heard."""
        return self.frames_played * FRAME_MS


@dataclass(frozen=True)
class ListenSettings:
    """How the gateway listens to the caller for this bot."""

    enabled: bool = True
    barge_in: bool = True  # caller speech stops the bot's playout at once
    resume_false_interruptions: bool = True
    """Playout only pauses at a sound; if it ends without becoming an utterance
    (a cough, a door, a short "mm"), the prompt goes on where it paused and the
    bot hears of nothing. Off: any sound that starts a turn cuts the prompt."""


class CallControl(Protocol):
    """What a bot can do on its call."""

    @property
    def info(self) -> CallInfo:
        """Call metadata."""
        ...

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """The call record's conversation log: append JSON-ready turns to keep them."""
        ...

    async def say(self, text: str, *, interruptible: bool = True) -> PlaybackResult:
        """Speak ``text`` with the gateway's TTS; returns when done or cut off."""
        ...

    async def play(
        self, audio: np.ndarray | str | Path, *, interruptible: bool = True, label: str = ""
    ) -> PlaybackResult:
        """Play 16 kHz mono int16 PCM, or a WAV file; returns when done or cut off."""
        ...

    def listen(
        self,
        *,
        enabled: bool = True,
        barge_in: bool = True,
        resume_false_interruptions: bool = True,
    ) -> None:
        """Turn listening, barge-in and resuming after a false interruption on or off."""
        ...

    async def hangup(self, reason: str = "bot hung up") -> None:
        """End the call: ``terminate`` through the Cloud API, then close."""
        ...

    def expect_input(self, within: float | None) -> None:
        """Call ``on_timeout`` if the caller neither speaks nor presses a key ``within`` s.

        ``None`` cancels. Any utterance or key cancels it too.
        """
        ...


class Bot(Protocol):
    """A bot plugin. One instance serves one call."""

    async def on_start(self, call: CallControl) -> None:
        """The call is answered and media flows."""
        ...

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        """The caller finished a turn."""
        ...

    # Optional: ``async def on_pause(self, call, utterance)`` is called when the caller
    # falls silent mid-turn (200 ms), with the speech so far, before the VAD hangover
    # closes the turn; the turn may still go on. Only bots that define it pay for it.

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        """The caller pressed a key."""
        ...

    async def on_barge_in(self, call: CallControl, interruption: Interruption) -> None:
        """The caller talked over the bot and playout was stopped.

        Called only for real interruptions: a sound that paused playout and
        then ended too short to be speech resumes the prompt instead (see
        :attr:`ListenSettings.resume_false_interruptions`).
        """
        ...

    async def on_timeout(self, call: CallControl) -> None:
        """The caller gave no input within the time set by ``expect_input``."""
        ...

    async def on_hangup(self, call: CallControl) -> None:
        """The call is over (either side hung up); the call can no longer be used."""
        ...


class BaseBot:
    """A bot that does nothing; subclass it and override what you need."""

    async def on_start(self, call: CallControl) -> None:
        """Nothing by default."""

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        """Nothing by default."""

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        """Nothing by default."""

    async def on_barge_in(self, call: CallControl, interruption: Interruption) -> None:
        """Nothing by default."""

    async def on_timeout(self, call: CallControl) -> None:
        """Nothing by default."""

    async def on_hangup(self, call: CallControl) -> None:
        """Nothing by default."""
