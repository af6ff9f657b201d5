"""The VAD's per-frame numeric step: ring copy, WebRTC's VAD and the frame's level.

:class:`~gateway.pipeline.vad.VadSegmenter` keeps its state machine in Python
and hands each frame to one step call, which copies it into the segmenter's
ring row, runs WebRTC's VAD on that row and measures the frame's level in dB,
``10 log10(p + 1)`` with ``p`` the frame's mean square or (for the voice gate)
its variance. Inside a busy gateway the numpy and VAD calls this replaces cost
~47 us a frame (cold caches, each through Python's call machinery);
``_vadstep.c`` does it in one compiled call.

The C step calls the ``WebRtcVad_Process`` of the webrtcvad wheel's own
``_webrtcvad`` extension (already loaded: ``ctypes`` hands back the same
library, not a second copy) on the ``Vad`` object's state. Its level sums the
squares in integers, exactly; the Python step's float32 product may differ in
the last bits. If the extension is not built the Python step runs instead
(a warning is logged once); it works in numpy, imported then.
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeAlias

import webrtcvad

from ..media.pcm import FRAME_SAMPLES, SAMPLE_RATE, AudioBuffer

if TYPE_CHECKING:
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

Step: TypeAlias = Callable[[AudioBuffer, int], tuple[bool, float]]
"""``step(frame, slot) -> (voiced, level_db)``; ValueError if ``frame`` is not 320 int16 samples."""

_SHAPE: Final = (FRAME_SAMPLES,)
_log10: Final = math.log10
# WebRTC's VAD through its C function: ``Vad.is_speech`` is a Python wrapper that
# re-checks the frame's length, ~0.7 us of a frame's ~6.
_vad_process: Final = webrtcvad._webrtcvad.process
_process_address: int | None = None


def available() -> bool:
    """Whether the compiled step is there."""
    return _vadstep is not None


def _process() -> int:
    """The address of ``WebRtcVad_Process`` in the already loaded ``_webrtcvad``."""
    global _process_address
    if _process_address is None:
        library = ctypes.CDLL(
            webrtcvad._webrtcvad.__file__
        )  # the loaded copy: dlopen counts a reference
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
