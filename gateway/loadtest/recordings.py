"""Caller recordings: WAV files loaded once and encoded to Opus once, shared by every call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AudioFileError
from ..media.audio import SAMPLE_RATE, frame_rms, load_wav
from ..media.opus import OpusEncoder

# Frames louder than this (int16 RMS) count as speech when finding where words end.
SPEECH_RMS = 500.0


@dataclass(frozen=True, eq=False)
class Recording:
    """A caller utterance: its name, PCM, and its Opus packets (encoded once)."""

    name: str
    pcm: np.ndarray
    packets: tuple[bytes, ...]

    @property
    def seconds(self) -> float:
        """Length of the recording."""
        return len(self.pcm) / SAMPLE_RATE

    @property
    def trailing_silence(self) -> float:
        """Seconds after the last loud 20 ms frame: response times count from speech end."""
        loud = np.flatnonzero(frame_rms(self.pcm) > SPEECH_RMS)
        return 0.0 if len(loud) == 0 else self.seconds - (loud[-1] + 1) * 0.020


def load_recordings(sources: Sequence[str]) -> tuple[list[Recording], list[str]]:
    """Load WAVs from files and folders; returns (recordings, warnings).

    A named file that cannot be read raises AudioFileError (the run is refused).
    Unreadable files found in a folder are skipped with a warning naming them.
    """
    recordings: list[Recording] = []
    warnings: list[str] = []
    encoder = OpusEncoder()
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for wav in sorted(path.glob("*.wav")):
                try:
                    pcm = load_wav(wav)
                except AudioFileError as exc:
                    warnings.append(f"skipped {exc.path}: {exc.reason}")
                    continue
                recordings.append(Recording(wav.name, pcm, tuple(encoder.encode_pcm(pcm))))
        else:
            pcm = load_wav(path)
            recordings.append(Recording(path.name, pcm, tuple(encoder.encode_pcm(pcm))))
    if not recordings:
        raise AudioFileError(", ".join(sources), "no readable WAV recordings")
    return recordings, warnings
