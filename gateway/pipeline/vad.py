"""Turn-taking: cut the caller's 20 ms frames into utterances with WebRTC's VAD.

:class:`VadSegmenter` runs in the media callback, once per frame, so it is built
to cost a few microseconds a frame: the start window is a bit mask, recent audio
lives in a fixed ring (which WebRTC's VAD reads), the ring copy, WebRTC's VAD and
the frame's level are one compiled call (:mod:`gateway.pipeline.vadstep`), and
the open utterance is one reusable buffer.

Times (``at_ms`` and friends) count from the first frame the segmenter was given
(or from the last :meth:`VadSegmenter.reset`) and are multiples of 20 ms. Its
configuration and events live in :mod:`gateway.pipeline.turns` (re-exported here).
"""

from __future__ import annotations

import math
from array import array
from typing import Final

import webrtcvad

from ..errors import GatewayError
from ..media.pcm import AudioBuffer, describe, silence
from .turns import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SpeechDiscarded,
    SpeechEnded,
    SpeechStarted,
    VadConfig,
    VadEvent,
)
from .vadstep import LEVEL_NONE, LEVEL_POWER, LEVEL_VARIANCE, make_step

__all__ = [
    "FRAME_MS",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "SpeechDiscarded",
    "SpeechEnded",
    "SpeechStarted",
    "VadConfig",
    "VadEvent",
    "VadSegmenter",
]


# Level trackers, per frame (exponential smoothing factors), found with vad_report.py.
_FLOOR_DOWN: Final = 0.1  # the room got quieter: follow within a few frames
_FLOOR_UP: Final = 0.05  # louder: follow within about a second
# The voice gate's room level: the recent loud end of what is not the caller.
_ROOM_RISE: Final = 0.5  # between turns: at once
_ROOM_RISE_IN_TURN: Final = 0.05  # in a turn, where the caller's soft sounds land too
_ROOM_DECAY_DB: Final = 0.1  # dB per frame (5 dB/s): a pause in the babble is no silence
_ROOM_HEADROOM_DB: Final = 10.0  # the first frame may be a lull: assume the room louder
_ROOM_SPREAD_DB: Final = 20.0  # the room's loud end over its floor, at most
_LEARN_QUIET_FRAMES: Final = 3  # unvoiced in a row: the room has shown itself
_LEARN_QUIET_DB: Final = 10.0  # a quiet moment is this close to the quietest frame so far
_LEARN_WARMUP_FRAMES: Final = 6  # WebRTC's VAD calls a stream's first 4-5 frames voiced
_LEARN_STEADY_DB: Final = 3.0  # there, a frame this close to the quietest is quiet too
_LEARN_MIN_FRAMES: Final = 50  # after 1 s ...
_LEARN_CONTRAST_DB: Final = 25.0  # ... with less between loudest and quietest: no caller yet
_LEARN_MAX_FRAMES: Final = 160  # 3.2 s without a pause: judge with what the room showed
_START_LOUD: Final = 3  # of the start window's frames, this many above the room
_TAIL_DB: Final = 2.0  # the soft end of a loud frame, just above the room, still counts


_NO_SAMPLES: Final = array("h")  # never written: any append grows it first


def _frames(ms: int) -> int:
    return -(-ms // FRAME_MS)  # round up: a partial frame still counts


class VadSegmenter:
    """Feed 20 ms frames, get :data:`VadEvent` s: one start, then one end or discard."""

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = cfg = config or VadConfig()
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
        self._voice_margin = float(cfg.voice_margin_db)
        self._floor_margin = float(cfg.floor_margin_db)
        self._start_voiced = cfg.start_voiced_frames
        self.reset()

    @property
    def in_speech(self) -> bool:
        """Whether a turn is open (started, not yet ended).

        Also true while the stream's first frames are held (see ``VadConfig.voice_gate``)
        and WebRTC's VAD would have started a turn in them: :meth:`flush` may end one.
        """
        return self._start_frame >= 0 or self._held_speech

    @property
    def turn_voiced_ms(self) -> int:
        """First to last voiced frame of the open turn (0 when idle)."""
        if self._start_frame < 0:
            return 0
        return (self._last_voiced + 1 - self._onset) * FRAME_MS

    @property
    def turn_is_utterance(self) -> bool:
        """Whether the open turn is already long enough to end as an utterance.

        Once true, the turn ends with :class:`SpeechEnded`, never with
        :class:`SpeechDiscarded`: a barge-in can be taken as real from here.
        """
        return self._start_frame >= 0 and self._last_voiced + 1 - self._onset >= self._min_voiced

    @property
    def turn_silence_ms(self) -> int:
        """Unvoiced audio since the open turn's last voiced frame (0 when idle)."""
        return self.silent_frames * FRAME_MS

    @property
    def frames_seen(self) -> int:
        """Frames pushed since construction or the last :meth:`reset`."""
        return self._index

    def reset(self) -> None:
        """Forget everything: any open turn is dropped without an event; time restarts at 0."""
        self._index = 0
        self._window = 0
        self._loud = 0  # start window of frames above the room (voice gate)
        self._start_frame = -1  # first frame in the utterance buffer; -1 when idle
        self._onset = 0
        self._last_voiced = 0
        self._filled = 0  # samples in the utterance buffer
        self._floor = -1.0
        self._room = -1.0  # the voice gate's room level; < 0 until the first frame
        self._prev_loud = False
        self._learning = self.config.voice_gate  # the voice gate first learns the room
        self._held: list[tuple[bool, float]] = []  # (voiced, dB) of the frames held while learning
        self._quiet_run = 0
        self._held_speech = False  # WebRTC's VAD would have started a turn in them
        self._quietest = math.inf
        self._loudest = -math.inf
        # The VAD's noise model belongs to the audio it has seen.
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        # Ring copy, WebRTC's VAD and the level in one call (it holds the ring and the VAD).
        self._frame_step = make_step(self._ring, self._vad, self._level)

    def push(self, frame: AudioBuffer) -> list[VadEvent]:
        """Process one 320-sample int16 frame; return the events it caused (usually none).

        ``frame`` is any 1-D buffer of format ``'h'`` (the decoder's ``array('h')``, a
        memoryview, an int16 numpy array).
        """
        index = self._index
        try:
            voiced, db = self._frame_step(frame, index % self._ring_rows)
        except ValueError:
            raise GatewayError(
                f"VAD frames must be {FRAME_SAMPLES} int16 samples (20 ms at 16 kHz), "
                f"got {describe(frame)}"
            ) from None
        self._index = index + 1
        if self._learning:
            return self._learn(index, frame, voiced, db)
        return self._step(index, frame, voiced, db)

    def _step(self, index: int, frame: AudioBuffer, voiced: bool, db: float) -> list[VadEvent]:
        if self._gated:
            gated = self._gate(db, voiced)
            if self._voice and self._start_frame < 0:
                # WebRTC's window as always, and enough of it clearly above the room.
                self._loud = loud = ((self._loud << 1) | gated) & self._window_mask
                if loud.bit_count() < _START_LOUD:
                    self._window = ((self._window << 1) | voiced) & self._window_mask
                    return []
            else:
                voiced = gated

        if self._start_frame < 0:
            self._window = window = ((self._window << 1) | voiced) & self._window_mask
            if window.bit_count() < self._start_voiced:
                return []
            return [self._open(index)]

        self._append(frame)
        if voiced:
            self._last_voiced = index
        if index - self._last_voiced >= self._hangover:
            return [self._close(index, forced=False)]
        if index + 1 - self._start_frame >= self._max_frames:
            return [self._close(index, forced=True)]
        return []

    def _learn(self, index: int, frame: AudioBuffer, voiced: bool, db: float) -> list[VadEvent]:
        """The stream's first frames, held until the room has shown what it sounds like.

        A stream may begin with the caller's voice or with other voices; the two
        look alike until the first pause. Until then frames are kept (in the
        utterance buffer) while the trackers follow the room; then they are judged
        again as if the room had been known from the start, so a caller who speaks
        at once loses nothing. Events of the held frames come out late, at most
        ``_LEARN_MAX_FRAMES`` frames after the stream began.
        """
        self._append(frame)
        self._held.append((voiced, db))
        self._gate(db, voiced)
        self._window = window = ((self._window << 1) | voiced) & self._window_mask
        self._held_speech = self._held_speech or window.bit_count() >= self._start_voiced
        # A quiet moment: unvoiced and near the quietest frame so far (WebRTC's VAD,
        # still learning the stream, may call loud speech unvoiced). In its first
        # frames it calls anything voiced: there a steady level is quiet too.
        self._quietest = quietest = min(self._quietest, db)
        self._loudest = loudest = max(self._loudest, db)
        if not voiced:
            quiet = db <= quietest + _LEARN_QUIET_DB
        else:
            quiet = index < _LEARN_WARMUP_FRAMES and db <= quietest + _LEARN_STEADY_DB
        self._quiet_run = self._quiet_run + 1 if quiet else 0
        if self._quiet_run >= _LEARN_QUIET_FRAMES or index + 1 >= _LEARN_MAX_FRAMES:
            return self._replay()
        # A second with neither a pause nor a voice well above the rest: the room is
        # other voices or noise, and the caller has not spoken yet.
        if index + 1 >= _LEARN_MIN_FRAMES and loudest - quietest < _LEARN_CONTRAST_DB:
            return self._replay()
        return []

    def _replay(self) -> list[VadEvent]:
        """End learning: judge the held frames against the room as learned."""
        held, run = self._held, self._quiet_run
        # The room's quiet end: the pause that ended learning, else the quietest frame.
        floor = min(db for _, db in held[-run:]) if run else self._quietest
        room = min(self._room, floor + _ROOM_SPREAD_DB)
        frames = memoryview(self._buf[: len(held) * FRAME_SAMPLES])  # a copy: _step appends
        self._learning = self._held_speech = False
        self._held = []
        self._window = 0
        self._filled = 0
        self._prev_loud = False
        events: list[VadEvent] = []
        ring, rows = self._ring_samples, self._ring_rows
        for index, (voiced, db) in enumerate(held):
            frame = frames[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES]
            row = index % rows * FRAME_SAMPLES
            ring[row : row + FRAME_SAMPLES] = frame
            # Held frames do not move the room: the caller's first words would raise it.
            self._floor, self._room = floor, room
            events += self._step(index, frame, voiced, db)
        self._floor, self._room = floor, room
        return events

    @property
    def silent_frames(self) -> int:
        """Unvoiced frames since the last voiced one of the open turn (0 when idle)."""
        return self._index - 1 - self._last_voiced if self._start_frame >= 0 else 0

    def peek(self) -> SpeechEnded | None:
        """The open turn so far, as it would end if no more speech came; it stays open.

        None when idle or when it would be discarded as too short. Its ``at_ms`` and
        ``started_at_ms`` equal those of the :class:`SpeechEnded` that later closes
        the turn, unless the caller speaks again first.
        """
        if not self.turn_is_utterance:
            return None
        last, onset = self._last_voiced, self._onset
        end_frame = min(last + 1 + self._post_roll, self._index)
        audio = self._buf[: (end_frame - self._start_frame) * FRAME_SAMPLES]  # a copy
        return SpeechEnded((last + 1) * FRAME_MS, onset * FRAME_MS, audio)

    def _gate(self, db: float, voiced: bool) -> bool:
        """Whether a frame WebRTC's VAD called ``voiced`` is loud enough to be the caller."""
        floor = self._floor
        if floor < 0:  # the first frame: the room as it is
            self._floor = db
            self._room = db + _ROOM_HEADROOM_DB
            return False
        in_turn = self._start_frame >= 0
        # The floor follows every frame down fast and up slowly, and not at all in a
        # turn, so it sits at the quiet moments of the room, not of the caller.
        dev = db - floor
        if dev < 0:
            self._floor = new_floor = floor + dev * _FLOOR_DOWN
        elif not in_turn:
            self._floor = new_floor = floor + dev * _FLOOR_UP
        else:
            new_floor = floor
        if not self._voice:
            return voiced and (not in_turn or db >= floor + self._floor_margin)

        # The voice gate. No room's loud end is far above its quiet moments: after a
        # silence (or a stream that began with the caller's own voice) the room is
        # at most this.
        room = min(self._room, new_floor + _ROOM_SPREAD_DB)
        loud = voiced and db >= room + self._voice_margin
        if not loud and in_turn and self._prev_loud:
            # The soft end of a loud stretch still counts, down to near the floor.
            loud = voiced and db >= min(room + _TAIL_DB, new_floor + self._floor_margin)
            self._prev_loud = loud
            return loud
        self._prev_loud = loud
        if not loud:
            # Babble's loud end: up at once to voiced sounds that are not the caller,
            # down slowly. Unvoiced sounds and those inside a turn (mostly the
            # caller's own consonants and soft words) move it slowly.
            if db > room:
                room += (db - room) * (_ROOM_RISE if voiced and not in_turn else _ROOM_RISE_IN_TURN)
            else:
                room = max(db, room - _ROOM_DECAY_DB)
        self._room = room
        return loud

    def flush(self) -> list[VadEvent]:
        """End of stream: close an open turn now, as if its hangover had passed."""
        events = self._replay() if self._learning and self._held else []
        if self._start_frame < 0:
            return events
        return [*events, self._close(self._index - 1, forced=False)]

    def _open(self, index: int) -> SpeechStarted:
        # Bit 0 is this frame. Voiced frames before two unvoiced ones are a separate
        # blip (a click, a change of background noise), not the start of this turn.
        window = self._window
        unvoiced = ~window & self._window_mask
        pairs = unvoiced & (unvoiced >> 1)
        if pairs:
            window &= (pairs & -pairs) - 1
        onset = index + 1 - window.bit_length()
        rows = self._ring_rows
        start = max(onset - self._pre_roll, index + 1 - rows, 0)
        self._filled = 0
        ring = self._ring_samples
        for frame in range(start, index + 1):  # a memcpy per row, once per turn
            row = frame % rows * FRAME_SAMPLES
            self._append(ring[row : row + FRAME_SAMPLES])
        self._start_frame = start
        self._onset = onset
        self._last_voiced = index
        self._window = 0
        self._loud = 0
        return SpeechStarted(onset * FRAME_MS)

    def _append(self, frame: AudioBuffer) -> None:
        """One frame (320 samples, checked by the step) onto the open turn's buffer."""
        filled = self._filled
        end = filled + FRAME_SAMPLES
        if end > len(self._buf):
            limit = (self._max_frames + self._pre_roll + self._ring_rows) * FRAME_SAMPLES
            grown = silence(min(max(end, 2 * len(self._buf), SAMPLE_RATE), limit))
            view = memoryview(grown)
            view[:filled] = self._buf_view[:filled]
            self._buf, self._buf_view = grown, view
        self._buf_view[filled:end] = frame  # type: ignore[assignment]  # ndarray: see AudioBuffer
        self._filled = end

    def _close(self, index: int, *, forced: bool) -> SpeechEnded | SpeechDiscarded:
        # A forced close cuts mid-speech: everything up to now belongs to the turn.
        last = index if forced else self._last_voiced
        end_frame = min(last + 1 + self._post_roll, index + 1)
        start_frame, onset = self._start_frame, self._onset
        self._start_frame = -1
        self._window = 0
        self._loud = 0
        buf = self._buf
        if len(buf) > SAMPLE_RATE:
            # A long turn's buffer (32 KB a second, up to 20 s) is not held for the rest of the
            # call: most calls spend most of their time between turns.
            self._buf = _NO_SAMPLES
            self._buf_view = memoryview(_NO_SAMPLES)
        if last + 1 - onset < self._min_voiced:
            return SpeechDiscarded((last + 1) * FRAME_MS, onset * FRAME_MS)
        audio = buf[: (end_frame - start_frame) * FRAME_SAMPLES]  # a copy
        return SpeechEnded((last + 1) * FRAME_MS, onset * FRAME_MS, audio)
