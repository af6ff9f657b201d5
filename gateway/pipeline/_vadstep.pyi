"""Types of the compiled VAD step (gateway/pipeline/_vadstep.c; see gateway.pipeline.vadstep)."""

from typing import Final

from gateway.media.pcm import AudioBuffer

FRAME_SAMPLES: Final[int]
LEVEL_NONE: Final[int]
LEVEL_POWER: Final[int]
LEVEL_VARIANCE: Final[int]

class VadStep:
    def __init__(self, ring: AudioBuffer, process: int, vad: object, level: int) -> None: ...
    def step(self, frame: AudioBuffer, slot: int) -> tuple[bool, float]:
        """The frame into ring row ``slot``; (WebRTC's verdict on it, its level in dB)."""
