"""Types of the compiled VAD step (gateway/pipeline/_vadstep.c; see gateway.pipeline.vad)."""

from collections.abc import Callable
from typing import Final

from gateway.media.pcm import AudioBuffer

FRAME_SAMPLES: Final[int]
LEVEL_NONE: Final[int]
LEVEL_POWER: Final[int]
LEVEL_VARIANCE: Final[int]
NOTHING: Final[int]
OPEN: Final[int]
CLOSE: Final[int]
CLOSE_FORCED: Final[int]
LEARN: Final[int]

class VadStep:
    # The segmenter's state (see gateway.pipeline.vad.core.Core), once configured.
    index: int
    window: int
    loud: int
    start_frame: int
    last_voiced: int
    filled: int
    floor: float
    room: float
    prev_loud: bool
    learning: bool
    @property
    def voiced(self) -> bool: ...
    @property
    def db(self) -> float: ...
    def __init__(self, ring: AudioBuffer, process: int, vad: object, level: int) -> None: ...
    def step(self, frame: AudioBuffer, slot: int) -> tuple[bool, float]:
        """The frame into ring row ``slot``; (WebRTC's verdict on it, its level in dB)."""
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
        """The segmenter's settings; its state from the start."""
    def push(self, frame: AudioBuffer, /) -> int:
        """The step into ring row ``index % rows``, then (unless learning) advance()."""
    def advance(self, index: int, voiced: bool, db: float, /) -> int:
        """The state machine for frame ``index``, already in its ring row."""
    def gate(self, db: float, voiced: bool, /) -> bool:
        """Whether a frame WebRTC's VAD called ``voiced`` is loud enough to be the caller."""
    def set_buffer(self, buffer: object, /) -> None:
        """Where the open turn's samples go (int16, writable) from now on."""

class FrameListener:
    """A bot session's frame listener: the step in C, Python only at its actions."""

    core: VadStep
    plain: bool
    def __init__(
        self,
        core: VadStep,
        on_step: Callable[[int, AudioBuffer], object],
        on_frame: Callable[[AudioBuffer], object],
    ) -> None: ...
    def __call__(self, frame: AudioBuffer, /) -> None:
        """While ``plain``: ``core.push(frame)``, and ``on_step(action, frame)`` if the
        action is not 0; else ``on_frame(frame)``."""
