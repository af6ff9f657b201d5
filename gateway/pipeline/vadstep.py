"""The VAD's per-frame core under its old name: it now lives in :mod:`gateway.pipeline.vad`.

Kept so that code importing ``gateway.pipeline.vadstep`` goes on working; new code
imports from :mod:`gateway.pipeline.vad.core` (the contract),
:mod:`~gateway.pipeline.vad.compiled` (the compiled core's set-up),
:mod:`~gateway.pipeline.vad.fallback` (the Python core) and
:mod:`~gateway.pipeline.vad.webrtc` (WebRTC's VAD).
"""

from .vad.compiled import available, frame_listener, make_core, make_step, rebind
from .vad.core import (
    CLOSE,
    CLOSE_FORCED,
    LEARN,
    LEVEL_NONE,
    LEVEL_POWER,
    LEVEL_VARIANCE,
    NOTHING,
    OPEN,
    Core,
    Step,
)
from .vad.fallback import PythonCore, PythonStep
from .vad.webrtc import WebRtcVad

__all__ = [
    "CLOSE",
    "CLOSE_FORCED",
    "LEARN",
    "LEVEL_NONE",
    "LEVEL_POWER",
    "LEVEL_VARIANCE",
    "NOTHING",
    "OPEN",
    "Core",
    "PythonCore",
    "PythonStep",
    "Step",
    "WebRtcVad",
    "available",
    "frame_listener",
    "make_core",
    "make_step",
    "rebind",
]
