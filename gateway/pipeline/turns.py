"""What the turn-taking segmenter (:mod:`gateway.pipeline.vad`) is told and tells.

Its configuration (:class:`VadConfig`), its events (:data:`VadEvent`), and the frame
format it takes: 20 ms of 16 kHz mono int16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from ..errors import ConfigError
from ..media.pcm import FRAME_MS, FRAME_SAMPLES, PCM, SAMPLE_RATE, to_ndarray

if TYPE_CHECKING:
    from ..media.pcm import Int16Array

__all__ = [
    "FRAME_MS",
    "FRAME_SAMPLES",
    "PCM",
    "SAMPLE_RATE",
    "SpeechDiscarded",
    "SpeechEnded",
    "SpeechStarted",
    "VadConfig",
    "VadEvent",
]


@dataclass(frozen=True)
class VadConfig:
    """How speech is detected and when a turn is over.

    Defaults measured on the recordings in ``shared/audio`` with
    ``benchmarks/vad_report.py``: WebRTC's VAD flags 4-5 frames as speech at any
    sudden change of background noise (the start of a stream, a click), so a start
    needs 6 voiced frames out of 8. Hangovers from 550 to 900 ms all keep two
    sentences 300 ms apart as one turn and split them at 1 s; 700 is the middle.
    """

    aggressiveness: int = 2
    """WebRTC VAD mode, 0 (most speech) to 3 (least)."""
    start_window_frames: int = 8
    """Frames looked at to declare a start."""
    start_voiced_frames: int = 6
    """Voiced frames needed within the window to declare a start."""
    hangover_ms: int = 700
    """Silence after the last voiced frame that closes the turn."""
    min_utterance_ms: int = 200
    """Shorter turns (first to last voiced frame) are discarded, not reported."""
    max_utterance_ms: int = 20000
    """Longer turns are closed by force, at this length of audio."""
    pre_roll_ms: int = 200
    """Audio kept before the first voiced frame, so the utterance starts cleanly."""
    post_roll_ms: int = 200
    """Audio kept after the last voiced frame (at most ``hangover_ms``)."""
    level_gate: bool = True
    """In a turn, a frame WebRTC's VAD calls voiced counts only if it is above the room.

    WebRTC's VAD keeps calling frames voiced for 80-120 ms after any sound ends;
    this gate ends the turn's voiced part where the sound ends, so a 150 ms
    cough is a 160 ms blip (discarded), not a 260 ms utterance. Starts are
    judged as without it.
    """
    floor_margin_db: int = 3
    """How far above the tracked noise floor a voiced frame must be."""
    voice_gate: bool = True
    """For rooms with other voices and noise: judge starts and turns against the
    room's recent loud end (voiced frames ``voice_margin_db`` above it; a start needs
    3 such frames of the window), measured as frame variance so low rumble does not
    count. The room is learned from the stream's first frames, which are held until
    it has shown a quiet moment (at most 3.2 s) and then judged, so a caller who
    speaks at once loses nothing. Measured in ``benchmarks/vad_report.py``; off
    (``GATEWAY_VAD_VOICE_GATE=0``) gives WebRTC's VAD with the floor gate only."""
    voice_margin_db: int = 5
    """With ``voice_gate``: how far above the room's loud end a voiced frame must be."""

    def __post_init__(self) -> None:
        if not 0 <= self.aggressiveness <= 3:
            raise ConfigError(f"VadConfig.aggressiveness must be 0-3, not {self.aggressiveness}")
        if not 1 <= self.start_voiced_frames <= self.start_window_frames <= 64:
            raise ConfigError(
                "VadConfig needs 1 <= start_voiced_frames <= start_window_frames <= 64, got "
                f"{self.start_voiced_frames} of {self.start_window_frames}"
            )
        for name in ("hangover_ms", "max_utterance_ms"):
            if getattr(self, name) < FRAME_MS:
                raise ConfigError(f"VadConfig.{name} must be at least {FRAME_MS} ms")
        for name in ("min_utterance_ms", "pre_roll_ms", "post_roll_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"VadConfig.{name} must not be negative")
        if self.min_utterance_ms >= self.max_utterance_ms:
            raise ConfigError("VadConfig.min_utterance_ms must be below max_utterance_ms")


@dataclass(frozen=True)
class SpeechStarted:
    """The caller started talking; ``at_ms`` is the first voiced frame of the turn.

    It is emitted once the start is confirmed, a few frames after ``at_ms``.
    """

    at_ms: int


@dataclass(frozen=True, eq=False)
class SpeechEnded:
    """The caller finished a turn.

    ``at_ms`` is the end of the last voiced frame (the event itself comes a
    hangover later); ``audio`` (an ``array('h')``) runs from ``pre_roll_ms`` before
    ``started_at_ms`` to ``post_roll_ms`` after ``at_ms``, clipped to the audio
    there was.
    """

    at_ms: int
    started_at_ms: int
    audio: PCM

    @property
    def pcm(self) -> Int16Array:
        """``audio`` as an int16 numpy array sharing its memory (imports numpy)."""
        return to_ndarray(self.audio)


@dataclass(frozen=True)
class SpeechDiscarded:
    """A started turn was too short to be speech (a cough, a click); no utterance."""

    at_ms: int
    started_at_ms: int


VadEvent: TypeAlias = SpeechStarted | SpeechEnded | SpeechDiscarded
