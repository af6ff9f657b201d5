"""Turn-taking: the caller's 20 ms frames cut into utterances with WebRTC's VAD.

The public face is :class:`VadSegmenter` with its configuration and events
(:mod:`gateway.pipeline.turns`, re-exported here). Inside, by concept:

- ``segmenter.py``: the segmenter, opening and closing turns, the utterance buffer;
- ``learning.py``: learning the room from a stream's first frames (the voice gate);
- ``core.py``: what the per-frame *core* does and tells the segmenter (the contract);
- ``compiled.py``: the compiled core (``gateway/pipeline/_vadstep.c``) set up;
- ``fallback.py``: the core in Python, the compiled one's fallback and reference;
- ``webrtc.py``: WebRTC's VAD, from the webrtcvad-wheels extension.
"""

from ..turns import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SpeechDiscarded,
    SpeechEnded,
    SpeechStarted,
    VadConfig,
    VadEvent,
)
from .segmenter import VadSegmenter

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
