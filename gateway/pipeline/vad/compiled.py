"""The compiled VAD core (``gateway/pipeline/_vadstep.c``): setting one up, or the fallback.

Inside a busy gateway the numpy and VAD calls of the Python step cost ~47 us a
frame (cold caches, each through Python's call machinery), the state machine
around it ~19 us more; ``_vadstep.c`` does both in one compiled call. It calls
the ``WebRtcVad_Process`` of the webrtcvad wheel's own ``_webrtcvad`` extension
(:func:`~gateway.pipeline.vad.webrtc.process_address`) on the ``Vad`` object's
state. If the extension is not built, :mod:`~gateway.pipeline.vad.fallback` runs
instead (a warning is logged once).

Its ``FrameListener`` takes a bot session's frames in C and calls back into
Python only at the core's actions (:func:`frame_listener`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...media.pcm import AudioBuffer
from .core import Core, Step
from .fallback import PythonCore, PythonStep
from .webrtc import process_address

if TYPE_CHECKING:
    import webrtcvad

logger = logging.getLogger(__name__)

try:
    from .._vadstep import FrameListener, VadStep
except ImportError as exc:  # pragma: no cover - depends on the install
    FrameListener = VadStep = None  # type: ignore[assignment,misc]
    logger.warning("gateway.pipeline._vadstep is not built (%s): the VAD step runs in Python", exc)


def available() -> bool:
    """Whether the compiled step is there."""
    return VadStep is not None


def make_step(ring: AudioBuffer, vad: webrtcvad.Vad, level: int, *, native: bool = True) -> Step:
    """The step for a segmenter's ``ring`` (a writable 2-D buffer of int16 rows of 320:
    a numpy array, or a memoryview cast to that shape) and its ``vad``."""
    if native and VadStep is not None:
        return VadStep(ring, process_address(), vad._vad, level).step
    return PythonStep(ring, vad, level)


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
    core: VadStep | PythonCore
    if native and VadStep is not None:
        core = VadStep(ring, process_address(), vad._vad, level)
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
) -> FrameListener | None:
    """The compiled frame listener over ``core`` (``_vadstep.FrameListener``), or None
    where the core is Python's: the media path calls it with every frame; while its
    ``plain`` is true it pushes the frame into ``core`` in C and calls
    ``on_step(action, frame)`` only for a nonzero action, else ``on_frame(frame)``."""
    if VadStep is None or not isinstance(core, VadStep):
        return None
    return FrameListener(core, on_step, on_frame)


def rebind(listener: FrameListener, core: Core) -> None:
    """Point ``listener`` at ``core`` (a segmenter's new core after its reset)."""
    assert VadStep is not None and isinstance(core, VadStep)
    listener.core = core
