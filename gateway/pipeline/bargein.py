"""What a caller's sound does to the bot's prompt: barge-in, or a pause and a resume.

At a speech onset the interruptible prompt playing now goes silent at once. If
the sound grows into an utterance, the rest of the prompt is dropped (a
barge-in, told to the bot as an :class:`~gateway.pipeline.bot.Interruption`);
if it ends short of one (a cough, a door), the prompt resumes where it paused (a
false interruption). A DTMF key cuts the prompt at once ("type-ahead").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from ..call import Call
from ..media.playout import Playback
from .bot import Interruption, ListenSettings
from .vad import VadSegmenter

# The session's logger: the sandbox timeline and operators filter on its name.
log = logging.getLogger("gateway.pipeline.session")

# Unvoiced audio after a sound, still too short for an utterance, that resumes a
# paused prompt. WebRTC's VAD often marks a frame or two after a sound as voiced,
# and the resumed audio takes a frame to leave: the caller hears the prompt again
# about 200-250 ms after the sound ended (the goal is within 300 ms).
RESUME_AFTER_MS = 160


class Counts(Protocol):
    """The session figures a barge-in counts (:class:`~gateway.pipeline.session.SessionMetrics`)."""

    barge_ins: int
    false_interruptions: int


class BargeIn:
    """The bot's prompt playing now, and the one a speech onset paused."""

    def __init__(
        self,
        call: Call,
        segmenter: VadSegmenter,
        counts: Counts,
        *,
        interrupted: Callable[[Interruption], None],
        held_changed: Callable[[], Callable[[], None] | None],
    ) -> None:
        self.call = call
        self.settings = ListenSettings()
        # The playback playing now, its label, and whether a caller may cut it.
        self.current: tuple[Playback, str, bool] | None = None
        self._segmenter = segmenter
        self._counts = counts
        self._interrupted = interrupted
        self._held_changed = held_changed
        self._held: Playback | None = None

    @property
    def held(self) -> Playback | None:
        """The playback a speech onset paused, until the caller's turn is decided."""
        return self._held

    @held.setter
    def held(self, playback: Playback | None) -> None:
        self._held = playback
        changed = self._held_changed()  # a weak method: None once its owner is gone
        if changed is not None:
            changed()

    def speech_started(self) -> bool:
        """Stop the bot's interruptible speech at a speech onset; True if it did."""
        if not self.settings.resume_false_interruptions:
            return self.barge_in("speech")
        playback = self._interruptible()
        if playback is None:
            return False
        # Silence at once, as a barge-in would; whether to drop the rest waits
        # until the sound is long enough to be a turn, or ends short of it.
        self.call.playout.pause()
        self.held = playback
        log.info("call %s: playout paused at speech onset", self.call.id)
        return True

    def decide(self) -> None:
        """Drop, resume or keep holding the paused prompt, as the caller's turn goes on."""
        held = self._held
        if held is None:
            return
        playout = self.call.playout
        segmenter = self._segmenter
        if held.done.done():
            self.held = None  # flushed meanwhile (a key, the call ending)
        elif segmenter.turn_is_utterance:
            self.barge_in("speech")
        elif playout.paused:
            if segmenter.turn_silence_ms >= RESUME_AFTER_MS:
                self.resume(f"a {segmenter.turn_voiced_ms} ms sound, not speech so far")
        elif segmenter.turn_silence_ms == 0:
            # More sound in the same turn: hold the prompt again until it is decided.
            playout.pause()

    def let_go(self, why: str) -> None:
        """Nothing will decide about the held prompt any more: it goes on, unheld."""
        if self._held is not None:
            self.resume(why)
            self.held = None

    def resume(self, why: str) -> None:
        """Let the held prompt go on; it stays held until the caller's turn is decided."""
        held = self._held
        if held is None or not self.call.playout.paused:
            return
        self.call.playout.resume()
        self._counts.false_interruptions += 1
        pause_frames = held.pauses[-1][1] if held.pauses else 0
        log.info("call %s: playout resumed after %d ms (%s)", self.call.id, pause_frames * 20, why)

    def barge_in(self, cause: str) -> bool:
        """Cut the bot's interruptible speech; True if it did."""
        self.held = None
        playback = self._interruptible()
        if playback is None:
            self.call.playout.resume()  # a pause must never outlive its decision
            return False
        assert self.current is not None
        label = self.current[1]
        dropped = self.call.playout.flush()
        self._counts.barge_ins += 1
        log.info("call %s: barge-in by %s, %d frames dropped", self.call.id, cause, dropped)
        self._interrupted(Interruption(label, playback.frames_sent, dropped))
        return True

    def _interruptible(self) -> Playback | None:
        current = self.current
        if current is None or not self.settings.barge_in:
            return None
        playback, _label, interruptible = current
        if not interruptible or playback.done.done():
            return None
        return playback
