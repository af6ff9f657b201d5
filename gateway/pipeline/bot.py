"""The bot plugin interface: what a bot is told, and how it acts on a call.

A bot is any object with the :class:`Bot` methods (subclass :class:`BaseBot` to
get no-op defaults). The gateway calls them one at a time per call, in order;
the bot acts through the :class:`CallControl` it is handed.
"""

from __future__ import annotations

import functools
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..events import Direction
from ..media.pcm import FRAME_MS, PCM, SAMPLE_RATE, AudioBuffer, as_samples, to_ndarray

if TYPE_CHECKING:
    from ..media.pcm import Int16Array


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
    """One turn of caller speech, as the VAD closed it (16 kHz mono int16).

    Read the samples as :attr:`audio` (an ``array('h')``: no numpy needed; hand it
    straight to :meth:`CallControl.play`, or ``bytes(audio)`` for the raw
    little-endian bytes) or as :attr:`pcm` (a numpy array of the same samples;
    numpy is imported on first use). Made with any int16 buffer (a numpy array
    too), it keeps its samples as an ``array('h')``.
    """

    audio: PCM
    """The samples, 16 kHz mono int16, as an ``array('h')``."""
    started_ms: int
    ended_ms: int

    def __post_init__(self) -> None:
        if not (isinstance(self.audio, array) and self.audio.typecode == "h"):
            # Frozen: the conversion is set the way dataclasses set fields themselves.
            object.__setattr__(self, "audio", array("h", as_samples(self.audio).tobytes()))

    @functools.cached_property
    def pcm(self) -> Int16Array:
        """The samples as a 1-D int16 numpy array sharing :attr:`audio`'s memory.

        Imports numpy on first use; bots that only pass the audio on use :attr:`audio`.
        """
        return to_ndarray(self.audio)

    @property
    def duration_ms(self) -> int:
        """Length of the utterance's audio."""
        return len(self.audio) * 1000 // SAMPLE_RATE


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
        self, audio: AudioBuffer | str | Path, *, interruptible: bool = True, label: str = ""
    ) -> PlaybackResult:
        """Play 16 kHz mono int16 PCM, or a WAV file; returns when done or cut off.

        PCM is any buffer of int16 samples: ``Utterance.audio``, an ``array('h')``, a
        memoryview of format ``'h'``, ``bytes``/``bytearray`` holding native int16,
        or a numpy array (int16; others are converted as ``np.asarray(audio,
        np.int16)`` would). A ``str`` or ``Path`` is a WAV file's name.
        """
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
