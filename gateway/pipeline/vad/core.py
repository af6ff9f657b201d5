"""What a VAD *core* is: the per-frame half of the segmenter, and what it tells it.

:class:`~gateway.pipeline.vad.segmenter.VadSegmenter` hands each frame to one call
of its core (:meth:`Core.push`), which copies it into the segmenter's ring row, runs
WebRTC's VAD on that row, measures the frame's level in dB, ``10 log10(p + 1)``
with ``p`` the frame's mean square or (for the voice gate) its variance
(:data:`LEVEL_POWER`, :data:`LEVEL_VARIANCE`), and then runs the frame-by-frame
part of the segmenter's state machine (the level and voice gates, the start window,
appending to the open turn, the hangover). It returns :data:`NOTHING` for most
frames; the segmenter's Python runs only when a turn opens or closes (:data:`OPEN`,
:data:`CLOSE`, :data:`CLOSE_FORCED`) or while the stream's first frames are held to
learn the room (:data:`LEARN`). The core's attributes are the state machine's
state, which the segmenter reads and writes for the rest.

Two cores keep this contract: the compiled one (``_vadstep.c``, set up by
:mod:`~gateway.pipeline.vad.compiled`) and its Python fallback and reference
(:mod:`~gateway.pipeline.vad.fallback`). ``_vadstep.c`` defines the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol, TypeAlias

from ...media.pcm import AudioBuffer

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

# The voice gate's room level is at most this far above the room's floor: the gate
# keeps it there, and learning the room starts it there (the C core's is the same).
ROOM_SPREAD_DB: Final = 20.0

Step: TypeAlias = Callable[[AudioBuffer, int], tuple[bool, float]]
"""``step(frame, slot) -> (voiced, level_db)``; ValueError if ``frame`` is not 320 int16 samples."""


class Core(Protocol):
    """A segmenter's ring, VAD, level and steady state (:class:`_vadstep.VadStep` or
    :class:`~gateway.pipeline.vad.fallback.PythonCore`). Times are frame indices from
    the stream's first frame."""

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
