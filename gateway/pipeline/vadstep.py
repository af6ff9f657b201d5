"""The VAD's per-frame work: ring copy, WebRTC's VAD, the level and the steady state.

:class:`~gateway.pipeline.vad.VadSegmenter` hands each frame to one call of its
*core* (:func:`make_core`), which copies it into the segmenter's ring row, runs
WebRTC's VAD on that row, measures the frame's level in dB, ``10 log10(p + 1)``
with ``p`` the frame's mean square or (for the voice gate) its variance, and
then runs the frame-by-frame part of the segmenter's state machine (the level
and voice gates, the start window, appending to the open turn, the hangover):
it returns :data:`NOTHING` for most frames, and the segmenter's Python runs
only when a turn opens or closes (:data:`OPEN`, :data:`CLOSE`,
:data:`CLOSE_FORCED`) or while the stream's first frames are held to learn the
room (:data:`LEARN`). The core's attributes are the state machine's state,
which the segmenter reads and writes for the rest. Inside a busy gateway the
numpy and VAD calls of the step cost ~47 us a frame (cold caches, each through
Python's call machinery), the state machine around it ~19 us more;
``_vadstep.c`` does both in one compiled call.


The C step calls the ``WebRtcVad_Process`` of the webrtcvad wheel's own
``_webrtcvad`` extension (already loaded: ``ctypes`` hands back the same
library, not a second copy) on the ``Vad`` object's state. Its level sums the
squares in integers, exactly; the Python step's float32 product may differ in
the last bits. Its state machine is :class:`PythonCore`'s line for line, in
doubles as Python's floats are (compiled without fused multiply-add), so the
turns are the same to the bit. If the extension is not built the Python core
runs instead (a warning is logged once); its step works in numpy, imported then.
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

import _webrtcvad  # the webrtcvad-wheels package's extension (see WebRtcVad)

from ..media.pcm import FRAME_SAMPLES, SAMPLE_RATE, AudioBuffer

if TYPE_CHECKING:
    import webrtcvad

    from ..media.pcm import Int16Array

logger = logging.getLogger(__name__)

try:
    from gateway.pipeline import _vadstep
except ImportError as exc:  # pragma: no cover - depends on the install
    _vadstep = None  # type: ignore[assignment]
    logger.warning("gateway.pipeline._vadstep is not built (%s): the VAD step runs in Python", exc)

# What the level is: none (no gate), the mean square, or the variance (voice gate).
LEVEL_NONE: Final = 0
LEVEL_POWER: Final = 1
LEVEL_VARIANCE: Final = 2

# What a core's push() and advance() return: what the segmenter has to do.
NOTHING: Final = 0
OPEN: Final = 1  # open a turn at this frame
CLOSE: Final = 2  # close the open turn, its hangover passed
CLOSE_FORCED: Final = 3  # close it, it reached its longest
LEARN: Final = 4  # the segmenter is learning the room: this frame is its own to judge

# The gate's constants (exponential smoothing factors per frame, found with vad_report.py).
_FLOOR_DOWN: Final = 0.1  # the room got quieter: follow within a few frames
_FLOOR_UP: Final = 0.05  # louder: follow within about a second
# The voice gate's room level: the recent loud end of what is not the caller.
_ROOM_RISE: Final = 0.5  # between turns: at once
_ROOM_RISE_IN_TURN: Final = 0.05  # in a turn, where the caller's soft sounds land too
_ROOM_DECAY_DB: Final = 0.1  # dB per frame (5 dB/s): a pause in the babble is no silence
_ROOM_HEADROOM_DB: Final = 10.0  # the first frame may be a lull: assume the room louder
_ROOM_SPREAD_DB: Final = 20.0  # the room's loud end over its floor, at most
_START_LOUD: Final = 3  # of the start window's frames, this many above the room
_TAIL_DB: Final = 2.0  # the soft end of a loud frame, just above the room, still counts

Step: TypeAlias = Callable[[AudioBuffer, int], tuple[bool, float]]
"""``step(frame, slot) -> (voiced, level_db)``; ValueError if ``frame`` is not 320 int16 samples."""

_SHAPE: Final = (FRAME_SAMPLES,)
_log10: Final = math.log10
# WebRTC's VAD through its C function: ``Vad.is_speech`` is a Python wrapper that
# re-checks the frame's length, ~0.7 us of a frame's ~6.
_vad_process: Final = _webrtcvad.process
_process_address: int | None = None


class WebRtcVad:
    """WebRTC's VAD state, made as ``webrtcvad.Vad(mode)`` makes it (``_vad`` is its capsule).

    The ``webrtcvad`` module itself is not imported: at import it looks its own
    version up with ``importlib.metadata`` (which brings ``zipfile``, ``csv`` and
    the email parser: 0.9 MiB that a gateway would keep for nothing). Its
    ``Vad`` is these three calls into the same extension.
    """

    def __init__(self, mode: int) -> None:
        self._vad = _webrtcvad.create()
        _webrtcvad.init(self._vad)
        _webrtcvad.set_mode(self._vad, mode)


def available() -> bool:
    """Whether the compiled step is there."""
    return _vadstep is not None


def _process() -> int:
    """The address of ``WebRtcVad_Process`` in the already loaded ``_webrtcvad``."""
    global _process_address
    if _process_address is None:
        library = ctypes.CDLL(_webrtcvad.__file__)  # the loaded copy: dlopen counts a reference
        _process_address = ctypes.cast(library.WebRtcVad_Process, ctypes.c_void_p).value or 0
    return _process_address


def make_step(ring: AudioBuffer, vad: webrtcvad.Vad, level: int, *, native: bool = True) -> Step:
    """The step for a segmenter's ``ring`` (a writable 2-D buffer of int16 rows of 320:
    a numpy array, or a memoryview cast to that shape) and its ``vad``."""
    if native and _vadstep is not None:
        return _vadstep.VadStep(ring, _process(), vad._vad, level).step
    return PythonStep(ring, vad, level)


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
        voiced: bool = _vad_process(
            self._handle, SAMPLE_RATE, self._ring_bytes[slot], FRAME_SAMPLES
        )
        if not self._level:
            return voiced, 0.0
        self._head[:] = samples  # int16 to float32, exact (cheaper than np.copyto's dispatch)
        self._np.dot(self._sums_in, self._head, out=self._sums)
        power, total = self._sums.tolist()
        if self._level == LEVEL_VARIANCE:
            power -= total * total / FRAME_SAMPLES
        return voiced, 10.0 * _log10(power / FRAME_SAMPLES + 1.0)


class Core(Protocol):
    """A segmenter's ring, VAD, level and steady state (:class:`_vadstep.VadStep` or
    :class:`PythonCore`). Times are frame indices from the stream's first frame."""

    index: int  # frames pushed
    window: int  # WebRTC's start window, bit 0 the last frame
    loud: int  # the voice gate's start window
    start_frame: int  # the open turn's first frame in the utterance buffer; -1 when idle
    last_voiced: int  # the open turn's last voiced frame
    filled: int  # samples in the utterance buffer
    floor: float  # the room's quiet level, dB; < 0 before the first frame
    room: float  # the voice gate's room level, dB
    prev_loud: bool
    learning: bool  # push() leaves every frame to the segmenter (LEARN)

    @property
    def voiced(self) -> bool:
        """WebRTC's verdict on the last pushed frame."""

    @property
    def db(self) -> float:
        """The last pushed frame's level."""

    def push(self, frame: AudioBuffer, /) -> int:
        """The frame into ring row ``index % rows``; what the segmenter must do."""

    def advance(self, index: int, voiced: bool, db: float, /) -> int:
        """The state machine for frame ``index``, already in its ring row."""

    def gate(self, db: float, voiced: bool, /) -> bool:
        """Whether a frame WebRTC's VAD called ``voiced`` is loud enough to be the caller."""

    def set_buffer(self, buffer: object, /) -> None:
        """Where the open turn's samples go (int16, writable) from now on."""


def make_core(
    ring: AudioBuffer,
    vad: webrtcvad.Vad,
    level: int,
    *,
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
    native: bool = True,
) -> Core:
    """The core for a segmenter's ``ring`` and ``vad`` with its settings, state from zero.

    ``grow(end)`` is called when the open turn needs room for ``end`` samples: it
    must hand a large enough buffer to :meth:`Core.set_buffer` (holding the old
    samples) before it returns. The buffer stays exported to the core until the
    next ``set_buffer``: do not resize it in place.
    """
    core: _vadstep.VadStep | PythonCore
    if native and _vadstep is not None:
        core = _vadstep.VadStep(ring, _process(), vad._vad, level)
    else:
        core = PythonCore(ring, vad, level)
    core.configure(
        window_frames,
        start_voiced,
        hangover,
        max_frames,
        gated,
        voice,
        voice_margin,
        floor_margin,
        learning,
        grow,
    )
    return core


def frame_listener(
    core: Core,
    on_step: Callable[[int, AudioBuffer], object],
    on_frame: Callable[[AudioBuffer], object],
) -> _vadstep.FrameListener | None:
    """The compiled frame listener over ``core`` (``_vadstep.FrameListener``), or None
    where the core is Python's: the media path calls it with every frame; while its
    ``plain`` is true it pushes the frame into ``core`` in C and calls
    ``on_step(action, frame)`` only for a nonzero action, else ``on_frame(frame)``."""
    if _vadstep is None or not isinstance(core, _vadstep.VadStep):
        return None
    return _vadstep.FrameListener(core, on_step, on_frame)


def rebind(listener: _vadstep.FrameListener, core: Core) -> None:
    """Point ``listener`` at ``core`` (a segmenter's new core after its reset)."""
    assert _vadstep is not None and isinstance(core, _vadstep.VadStep)
    listener.core = core


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
        room = min(self.room, new_floor + _ROOM_SPREAD_DB)
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
