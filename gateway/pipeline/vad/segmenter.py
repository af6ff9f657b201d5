"""Turn-taking: cut the caller's 20 ms frames into utterances with WebRTC's VAD.

:class:`VadSegmenter` runs in the media callback, once per frame, so it is built
to cost a few microseconds a frame: the start window is a bit mask, recent audio
lives in a fixed ring (which WebRTC's VAD reads), the open utterance is one
reusable buffer, and the ring copy, WebRTC's VAD, the frame's level and the
frame-by-frame state machine (gates, start window, hangover) are one compiled
call (the *core*, :mod:`gateway.pipeline.vad.core`). This module's Python runs
when a turn opens or closes and while the stream's first frames are held
(:mod:`gateway.pipeline.vad.learning`).

Times (``at_ms`` and friends) count from the first frame the segmenter was given
(or from the last :meth:`VadSegmenter.reset`) and are multiples of 20 ms. Its
configuration and events live in :mod:`gateway.pipeline.turns`.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ...errors import GatewayError
from ...media.pcm import AudioBuffer, describe, silence
from ..turns import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SpeechDiscarded,
    SpeechEnded,
    SpeechStarted,
    VadConfig,
    VadEvent,
)
from .compiled import frame_listener, make_core, rebind
from .core import CLOSE_FORCED, LEARN, LEVEL_NONE, LEVEL_POWER, LEVEL_VARIANCE, OPEN, Core
from .learning import RoomLearner
from .webrtc import WebRtcVad

if TYPE_CHECKING:
    from .._vadstep import FrameListener

_NO_SAMPLES: Final = array("h")  # never written: any append grows it first


def _frames(ms: int) -> int:
    return -(-ms // FRAME_MS)  # round up: a partial frame still counts


class VadSegmenter:
    """Feed 20 ms frames, get :data:`VadEvent` s: one start, then one end or discard."""

    def __init__(self, config: VadConfig | None = None, *, native: bool = True) -> None:
        """``native=False`` runs the Python core even where the compiled one is built."""
        self.config = cfg = config or VadConfig()
        self._native = native
        self._window_mask = (1 << cfg.start_window_frames) - 1
        self._hangover = _frames(cfg.hangover_ms)
        self._min_voiced = _frames(cfg.min_utterance_ms)
        self._max_frames = _frames(cfg.max_utterance_ms)
        self._pre_roll = _frames(cfg.pre_roll_ms)
        self._post_roll = min(_frames(cfg.post_roll_ms), self._hangover)
        # The ring must reach back over the start window and the pre-roll before it:
        # int16 rows of a frame, one buffer seen as rows by the step (2-D) and as
        # samples here (1-D).
        self._ring_rows = rows = cfg.start_window_frames + self._pre_roll
        ring = bytearray(rows * FRAME_SAMPLES * 2)
        self._ring = memoryview(ring).cast("h", (rows, FRAME_SAMPLES))
        self._ring_samples = memoryview(ring).cast("h")
        # Grown by doubling from 1 s up to the longest possible utterance; reused for
        # the next turn up to 1 s, beyond that let go when the turn ends (see _close).
        # Written through a view (a memcpy from any int16 buffer).
        self._buf = _NO_SAMPLES
        self._buf_view = memoryview(self._buf)
        self._gated = cfg.level_gate or cfg.voice_gate
        self._voice = cfg.voice_gate
        # The voice gate reads the frame's variance, not its power: rumble below 50 Hz
        # (most of pink noise's power, none of a voice's) moves a frame's mean, not its variance.
        self._level = LEVEL_VARIANCE if self._voice else LEVEL_POWER if self._gated else LEVEL_NONE
        self._start_voiced = cfg.start_voiced_frames
        self._listener: FrameListener | None = None
        self.reset()

    @property
    def in_speech(self) -> bool:
        """Whether a turn is open (started, not yet ended).

        Also true while the stream's first frames are held (see ``VadConfig.voice_gate``)
        and WebRTC's VAD would have started a turn in them: :meth:`flush` may end one.
        """
        return self._core.start_frame >= 0 or self._held_speech

    @property
    def turn_voiced_ms(self) -> int:
        """First to last voiced frame of the open turn (0 when idle)."""
        core = self._core
        if core.start_frame < 0:
            return 0
        return (core.last_voiced + 1 - self._onset) * FRAME_MS

    @property
    def turn_is_utterance(self) -> bool:
        """Whether the open turn is already long enough to end as an utterance.

        Once true, the turn ends with :class:`SpeechEnded`, never with
        :class:`SpeechDiscarded`: a barge-in can be taken as real from here.
        """
        core = self._core
        return core.start_frame >= 0 and core.last_voiced + 1 - self._onset >= self._min_voiced

    @property
    def turn_silence_ms(self) -> int:
        """Unvoiced audio since the open turn's last voiced frame (0 when idle)."""
        return self.silent_frames * FRAME_MS

    @property
    def frames_seen(self) -> int:
        """Frames pushed since construction or the last :meth:`reset`."""
        return self._core.index

    def reset(self) -> None:
        """Forget everything: any open turn is dropped without an event; time restarts at 0."""
        cfg = self.config
        self._onset = 0
        self._learner = RoomLearner()  # the stream's first frames, while the room is learned
        self._held_speech = False  # WebRTC's VAD would have started a turn in them
        # The VAD's noise model belongs to the audio it has seen.
        self._vad = WebRtcVad(cfg.aggressiveness)
        # Ring copy, WebRTC's VAD, the level and the steady state in one call: the
        # core holds the ring, the VAD, the utterance buffer and the state machine's state.
        self._core: Core = make_core(
            self._ring,
            self._vad,
            self._level,
            window_frames=cfg.start_window_frames,
            start_voiced=cfg.start_voiced_frames,
            hangover=self._hangover,
            max_frames=self._max_frames,
            gated=self._gated,
            voice=self._voice,
            voice_margin=float(cfg.voice_margin_db),
            floor_margin=float(cfg.floor_margin_db),
            learning=cfg.voice_gate,  # the voice gate first learns the room
            grow=self._grow,
            native=self._native,
        )
        self._core.set_buffer(self._buf)
        self.step: Callable[[AudioBuffer], int] = self._core.push
        """The compiled step alone (the core's ``push``, a new one after :meth:`reset`):
        ``step(frame) -> action``; a nonzero action must go to :meth:`events` before
        the next frame. :meth:`push` is the two; a caller in the media callback
        (:class:`~gateway.pipeline.session.BotSession`) calls them apart to spare a
        Python call per frame, ValueError (a frame of the wrong shape) its to report
        with :meth:`frame_error`. Only a frame with a nonzero action can change
        :attr:`in_speech`."""
        if self._listener is not None:
            rebind(self._listener, self._core)

    def frame_listener(
        self,
        on_step: Callable[[int, AudioBuffer], object],
        on_frame: Callable[[AudioBuffer], object],
    ) -> FrameListener | None:
        """A compiled frame listener over this segmenter (one per segmenter; it follows
        :meth:`reset`), or None where the core is Python's: see
        :func:`gateway.pipeline.vad.compiled.frame_listener`. ``on_step(action, frame)`` must
        hand the action to :meth:`events`, as :meth:`push` would."""
        if self._listener is None:
            self._listener = frame_listener(self._core, on_step, on_frame)
        return self._listener

    def drop_frame_listener(self) -> None:
        """Let go of the compiled listener: it holds its callbacks (a session's own
        methods), a cycle that would keep the session and its call until a full GC."""
        self._listener = None

    def push(self, frame: AudioBuffer) -> list[VadEvent]:
        """Process one 320-sample int16 frame; return the events it caused (usually none).

        ``frame`` is any 1-D buffer of format ``'h'`` (the decoder's ``array('h')``, a
        memoryview, an int16 numpy array).
        """
        try:
            action = self.step(frame)
        except ValueError:
            raise self.frame_error(frame) from None
        return self.events(action, frame) if action else []

    @staticmethod
    def frame_error(frame: object) -> GatewayError:
        """The error for a frame :attr:`step` refused (ValueError: not 320 int16 samples)."""
        return GatewayError(
            f"VAD frames must be {FRAME_SAMPLES} int16 samples (20 ms at 16 kHz), "
            f"got {describe(frame)}"
        )

    def events(self, action: int, frame: AudioBuffer) -> list[VadEvent]:
        """The events of the ``action`` that :attr:`step` returned for ``frame``."""
        if not action:
            return []
        core = self._core
        if action == LEARN:
            return self._learn(core.index - 1, frame, core.voiced, core.db)
        return self._act(core.index - 1, action)

    def _act(self, index: int, action: int) -> list[VadEvent]:
        """The event of what the core's state machine found at frame ``index``."""
        if action == OPEN:
            return [self._open(index)]
        return [self._close(index, forced=action == CLOSE_FORCED)]

    def _learn(self, index: int, frame: AudioBuffer, voiced: bool, db: float) -> list[VadEvent]:
        """Hold one of the stream's first frames while the room is learned (see
        :mod:`~gateway.pipeline.vad.learning`); once it is, judge the held ones."""
        core = self._core
        self._append(frame)
        core.gate(db, voiced)
        core.window = window = ((core.window << 1) | voiced) & self._window_mask
        self._held_speech = self._held_speech or window.bit_count() >= self._start_voiced
        return self._replay() if self._learner.hear(index, voiced, db) else []

    def _replay(self) -> list[VadEvent]:
        """End learning: judge the held frames against the room as learned."""
        core = self._core
        held, floor, room = self._learner.finish(core.room)
        frames = memoryview(self._buf[: len(held) * FRAME_SAMPLES])  # a copy: the core appends
        core.learning = self._held_speech = False
        core.window = 0
        core.filled = 0
        core.prev_loud = False
        events: list[VadEvent] = []
        ring, rows = self._ring_samples, self._ring_rows
        for index, (voiced, db) in enumerate(held):
            frame = frames[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES]
            row = index % rows * FRAME_SAMPLES
            ring[row : row + FRAME_SAMPLES] = frame
            # Held frames do not move the room: the caller's first words would raise it.
            core.floor, core.room = floor, room
            action = core.advance(index, voiced, db)  # the frame is in its ring row
            if action:
                events += self._act(index, action)
        core.floor, core.room = floor, room
        return events

    @property
    def silent_frames(self) -> int:
        """Unvoiced frames since the last voiced one of the open turn (0 when idle)."""
        core = self._core
        return core.index - 1 - core.last_voiced if core.start_frame >= 0 else 0

    def peek(self) -> SpeechEnded | None:
        """The open turn so far, as it would end if no more speech came; it stays open.

        None when idle or when it would be discarded as too short. Its ``at_ms`` and
        ``started_at_ms`` equal those of the :class:`SpeechEnded` that later closes
        the turn, unless the caller speaks again first.
        """
        if not self.turn_is_utterance:
            return None
        core = self._core
        last, onset = core.last_voiced, self._onset
        end_frame = min(last + 1 + self._post_roll, core.index)
        audio = self._buf[: (end_frame - core.start_frame) * FRAME_SAMPLES]  # a copy
        return SpeechEnded((last + 1) * FRAME_MS, onset * FRAME_MS, audio)

    def flush(self) -> list[VadEvent]:
        """End of stream: close an open turn now, as if its hangover had passed."""
        core = self._core
        events = self._replay() if core.learning and self._learner.held else []
        if core.start_frame < 0:
            return events
        return [*events, self._close(core.index - 1, forced=False)]

    def _open(self, index: int) -> SpeechStarted:
        # Bit 0 is this frame. Voiced frames before two unvoiced ones are a separate
        # blip (a click, a change of background noise), not the start of this turn.
        core = self._core
        window = core.window
        unvoiced = ~window & self._window_mask
        pairs = unvoiced & (unvoiced >> 1)
        if pairs:
            window &= (pairs & -pairs) - 1
        onset = index + 1 - window.bit_length()
        rows = self._ring_rows
        start = max(onset - self._pre_roll, index + 1 - rows, 0)
        core.filled = 0
        ring = self._ring_samples
        for frame in range(start, index + 1):  # a memcpy per row, once per turn
            row = frame % rows * FRAME_SAMPLES
            self._append(ring[row : row + FRAME_SAMPLES])
        core.start_frame = start
        self._onset = onset
        core.last_voiced = index
        core.window = 0
        core.loud = 0
        return SpeechStarted(onset * FRAME_MS)

    def _append(self, frame: AudioBuffer) -> None:
        """One frame (320 samples, checked by the step) onto the open turn's buffer."""
        core = self._core
        filled = core.filled
        end = filled + FRAME_SAMPLES
        if end > len(self._buf):
            self._grow(end)
        self._buf_view[filled:end] = frame  # type: ignore[assignment]  # ndarray: see AudioBuffer
        core.filled = end

    def _grow(self, end: int) -> None:
        """Room for ``end`` samples in the utterance buffer (the core calls it too)."""
        filled = self._core.filled
        limit = (self._max_frames + self._pre_roll + self._ring_rows) * FRAME_SAMPLES
        grown = silence(min(max(end, 2 * len(self._buf), SAMPLE_RATE), limit))
        view = memoryview(grown)
        view[:filled] = self._buf_view[:filled]
        self._buf, self._buf_view = grown, view
        self._core.set_buffer(grown)  # exported to the core: grown anew, never resized

    def _close(self, index: int, *, forced: bool) -> SpeechEnded | SpeechDiscarded:
        # A forced close cuts mid-speech: everything up to now belongs to the turn.
        last = index if forced else self._core.last_voiced
        end_frame = min(last + 1 + self._post_roll, index + 1)
        core = self._core
        start_frame, onset = core.start_frame, self._onset
        core.start_frame = -1
        core.window = 0
        core.loud = 0
        buf = self._buf
        if len(buf) > SAMPLE_RATE:
            # A long turn's buffer (32 KB a second, up to 20 s) is not held for the rest of the
            # call: most calls spend most of their time between turns.
            self._buf = _NO_SAMPLES
            self._buf_view = memoryview(_NO_SAMPLES)
            core.set_buffer(_NO_SAMPLES)
        if last + 1 - onset < self._min_voiced:
            return SpeechDiscarded((last + 1) * FRAME_MS, onset * FRAME_MS)
        audio = buf[: (end_frame - start_frame) * FRAME_SAMPLES]  # a copy
        return SpeechEnded((last + 1) * FRAME_MS, onset * FRAME_MS, audio)
