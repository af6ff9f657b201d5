"""The VAD core in Python: the compiled core's fallback, and the reference it is tested against.

:class:`PythonStep` is the frame's numeric step in numpy (ring copy, WebRTC's VAD,
the level); :class:`PythonCore` wraps it with the segmenter's frame-by-frame state
machine and its gates, as :class:`~gateway.pipeline.vad.segmenter.VadSegmenter` ran
them before ``_vadstep.c``. The C core is this module line for line, in doubles as
Python's floats are (compiled without fused multiply-add), so the turns are the same
to the bit; its level sums the squares in integers, exactly, where this step's
float32 product may differ in the last bits. numpy is imported by the first
:class:`PythonStep`, not before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ...media.pcm import FRAME_SAMPLES, SAMPLE_RATE, AudioBuffer
from .core import (
    CLOSE,
    CLOSE_FORCED,
    LEARN,
    LEVEL_VARIANCE,
    NOTHING,
    OPEN,
    ROOM_SPREAD_DB,
    Step,
)
from .webrtc import vad_process

if TYPE_CHECKING:
    import webrtcvad

    from ...media.pcm import Int16Array

# The gate's constants (exponential smoothing factors per frame, found with vad_report.py).
_FLOOR_DOWN: Final = 0.1  # the room got quieter: follow within a few frames
_FLOOR_UP: Final = 0.05  # louder: follow within about a second
# The voice gate's room level: the recent loud end of what is not the caller.
_ROOM_RISE: Final = 0.5  # between turns: at once
_ROOM_RISE_IN_TURN: Final = 0.05  # in a turn, where the caller's soft sounds land too
_ROOM_DECAY_DB: Final = 0.1  # dB per frame (5 dB/s): a pause in the babble is no silence
_ROOM_HEADROOM_DB: Final = 10.0  # the first frame may be a lull: assume the room louder
_START_LOUD: Final = 3  # of the start window's frames, this many above the room
_TAIL_DB: Final = 2.0  # the soft end of a loud frame, just above the room, still counts

_SHAPE: Final = (FRAME_SAMPLES,)
_log10: Final = math.log10


class PythonStep:
    """The step in numpy, as the segmenter did it before ``_vadstep.c`` (its fallback)."""

    def __init__(self, ring: AudioBuffer, vad: webrtcvad.Vad, level: int) -> None:
        import numpy as np

        self._np = np
        self._int16 = np.dtype(np.int16)
        self._ring: Int16Array = np.asarray(ring)  # the same memory, as numpy rows
        # WebRTC's VAD reads each frame from its ring row, through byte views made once.
        self._ring_bytes = [row.data.cast("B") for row in self._ring]
        self._handle = vad._vad
        self._level = level
        # Row 0 takes the frame, row 1 is ones: one product gives sum of squares and sum.
        self._sums_in = np.ones((2, FRAME_SAMPLES), np.float32)
        self._head = self._sums_in[0]
        self._sums = np.zeros(2, np.float32)

    def __call__(self, frame: AudioBuffer, slot: int) -> tuple[bool, float]:
        samples = self._np.asarray(frame)
        if samples.dtype != self._int16 or samples.shape != _SHAPE:
            raise ValueError(f"a frame must be {FRAME_SAMPLES} int16 samples")
        self._ring[slot] = samples  # a contiguous copy, whatever the frame's strides
        voiced: bool = vad_process(self._handle, SAMPLE_RATE, self._ring_bytes[slot], FRAME_SAMPLES)
        if not self._level:
            return voiced, 0.0
        self._head[:] = samples  # int16 to float32, exact (cheaper than np.copyto's dispatch)
        self._np.dot(self._sums_in, self._head, out=self._sums)
        power, total = self._sums.tolist()
        if self._level == LEVEL_VARIANCE:
            power -= total * total / FRAME_SAMPLES
        return voiced, 10.0 * _log10(power / FRAME_SAMPLES + 1.0)


class PythonCore:
    """The core in Python, as :class:`~gateway.pipeline.vad.VadSegmenter` ran it before
    ``_vadstep.c`` (its fallback, and the reference the C core is tested against)."""

    voiced: bool
    db: float

    def __init__(self, ring: AudioBuffer, vad: webrtcvad.Vad, level: int) -> None:
        self.step: Step = PythonStep(ring, vad, level)
        # Ring rows by index, and the utterance buffer, as int16 memoryviews.
        self._ring = memoryview(ring).cast("B").cast("h")  # type: ignore[arg-type]
        self._rows = len(self._ring) // FRAME_SAMPLES
        self._buf = memoryview(b"").cast("h")

    def configure(
        self,
        window_frames: int,
        start_voiced: int,
        hangover: int,
        max_frames: int,
        gated: bool,
        voice: bool,
        voice_margin: float,
        floor_margin: float,
        learning: bool,
        grow: Callable[[int], object],
    ) -> None:
        if not 1 <= start_voiced <= window_frames <= 64:
            raise ValueError(
                f"need 1 <= start_voiced <= window_frames <= 64, got {start_voiced} "
                f"of {window_frames}"
            )
        if hangover < 1 or max_frames < 1:
            raise ValueError("hangover and max_frames must be at least 1 frame")
        self._mask = (1 << window_frames) - 1
        self._start_voiced = start_voiced
        self._hangover = hangover
        self._max_frames = max_frames
        self._gated = gated
        self._voice = voice
        self._voice_margin = float(voice_margin)
        self._floor_margin = float(floor_margin)
        self._grow = grow
        self.learning = learning
        self.index = self.filled = self.last_voiced = 0
        self.start_frame = -1
        self.window = self.loud = 0
        self.floor = self.room = -1.0
        self.prev_loud = self.voiced = False
        self.db = 0.0

    def set_buffer(self, buffer: object) -> None:
        try:
            view = memoryview(buffer)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(
                f"the utterance buffer must be writable int16 samples, got {type(buffer).__name__}"
            ) from None
        if view.format != "h" or view.readonly or not view.c_contiguous:
            raise ValueError("the utterance buffer must be writable int16 samples")
        self._buf = view.cast("B").cast("h")

    def push(self, frame: AudioBuffer) -> int:
        index = self.index
        self.voiced, self.db = voiced, db = self.step(frame, index % self._rows)
        self.index = index + 1
        if self.learning:
            return LEARN
        return self.advance(index, voiced, db)

    def advance(self, index: int, voiced: bool, db: float) -> int:
        if self._gated:
            gated = self.gate(db, voiced)
            if self._voice and self.start_frame < 0:
                # WebRTC's window as always, and enough of it clearly above the room.
                self.loud = loud = ((self.loud << 1) | gated) & self._mask
                if loud.bit_count() < _START_LOUD:
                    self.window = ((self.window << 1) | voiced) & self._mask
                    return NOTHING
            else:
                voiced = gated

        if self.start_frame < 0:
            self.window = window = ((self.window << 1) | voiced) & self._mask
            return NOTHING if window.bit_count() < self._start_voiced else OPEN

        # The open turn takes the frame (from its ring row).
        filled = self.filled
        end = filled + FRAME_SAMPLES
        if end > len(self._buf):
            self._grow(end)
            if end > len(self._buf):
                raise RuntimeError("grow() left no room in the utterance buffer")
        row = (index % self._rows) * FRAME_SAMPLES
        self._buf[filled:end] = self._ring[row : row + FRAME_SAMPLES]
        self.filled = end
        if voiced:
            self.last_voiced = index
        if index - self.last_voiced >= self._hangover:
            return CLOSE
        if index + 1 - self.start_frame >= self._max_frames:
            return CLOSE_FORCED
        return NOTHING

    def gate(self, db: float, voiced: bool) -> bool:
        floor = self.floor
        if floor < 0:  # the first frame: the room as it is
            self.floor = db
            self.room = db + _ROOM_HEADROOM_DB
            return False
        in_turn = self.start_frame >= 0
        # The floor follows every frame down fast and up slowly, and not at all in a
        # turn, so it sits at the quiet moments of the room, not of the caller.
        dev = db - floor
        if dev < 0:
            self.floor = new_floor = floor + dev * _FLOOR_DOWN
        elif not in_turn:
            self.floor = new_floor = floor + dev * _FLOOR_UP
        else:
            new_floor = floor
        if not self._voice:
            return voiced and (not in_turn or db >= floor + self._floor_margin)

        # The voice gate. No room's loud end is far above its quiet moments: after a
        # silence (or a stream that began with the caller's own voice) the room is
        # at most this.
        room = min(self.room, new_floor + ROOM_SPREAD_DB)
        loud = voiced and db >= room + self._voice_margin
        if not loud and in_turn and self.prev_loud:
            # The soft end of a loud stretch still counts, down to near the floor.
            loud = voiced and db >= min(room + _TAIL_DB, new_floor + self._floor_margin)
            self.prev_loud = loud
            return loud
        self.prev_loud = loud
        if not loud:
            # Babble's loud end: up at once to voiced sounds that are not the caller,
            # down slowly. Unvoiced sounds and those inside a turn (mostly the
            # caller's own consonants and soft words) move it slowly.
            if db > room:
                room += (db - room) * (_ROOM_RISE if voiced and not in_turn else _ROOM_RISE_IN_TURN)
            else:
                room = max(db, room - _ROOM_DECAY_DB)
        self.room = room
        return loud
