"""The pipeline's audio format on the standard library: 16 kHz mono int16 samples.

The per-call path (decode, VAD, utterance, echo, playout, encode) holds audio as
``array('h')`` (:data:`PCM`) and reads it through ``memoryview`` s of format
``'h'``; the copies are ``memcpy`` s in C (array and memoryview slicing, the
compiled decode and VAD step), never a Python loop over samples. numpy is not
imported for it: a gateway running the echo bot never loads numpy (14.5 MiB).

Where audio comes in from a bot, any buffer of native int16 samples will do
(:data:`AudioBuffer`: an ``array('h')``, a ``memoryview`` of format ``'h'``, an
int16 numpy array, or ``bytes``/``bytearray`` holding the samples); numpy
arrays of another dtype or plain lists are converted as ``np.asarray(audio,
np.int16)`` did before, importing numpy then. :func:`to_ndarray` gives a bot
the numpy view it asks for, importing numpy on first use.
"""

from __future__ import annotations

import sys
from array import array
from typing import TYPE_CHECKING, Any, Final, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from typing_extensions import Buffer

SAMPLE_RATE: Final = 16000
FRAME_MS: Final = 20
FRAME_SAMPLES: Final = SAMPLE_RATE * FRAME_MS // 1000

PCM: TypeAlias = "array[int]"
"""Samples the gateway makes (decoded frames, utterances): an ``array('h')``."""
AudioBuffer: TypeAlias = "Buffer | NDArray[np.int16]"
"""Samples the gateway takes: any buffer of native int16 (see the module's doc).

(numpy declares ndarray's buffer protocol to type checkers only from Python 3.12.)"""
Int16Array: TypeAlias = "NDArray[np.int16]"
"""Samples as numpy holds them, for the parts that use numpy (WAV files, TTS, ASR)."""

_RAW_FORMATS: Final = frozenset({"B", "b", "c"})
_INT16_FORMATS: Final = frozenset({"h", "=h", "<h" if sys.byteorder == "little" else ">h"})


def silence(samples: int) -> PCM:
    """``samples`` zero samples."""
    return array("h", bytes(2 * samples))


def as_samples(audio: Any, *, convert: bool = False) -> memoryview:
    """A 1-D ``memoryview`` of format ``'h'`` over ``audio``'s int16 samples.

    No copy for an ``array('h')``, an ``'h'`` memoryview, a contiguous int16
    numpy array or ``bytes``/``bytearray`` (native int16, an even number of
    bytes). A strided int16 buffer is copied. Anything else raises ValueError,
    unless ``convert``: then it goes through ``np.asarray(audio, dtype=np.int16)``
    (a float or int32 array, a list of ints; numpy is imported), as the bot API
    always did. ValueError too for an odd number of raw bytes or audio that is
    not one-dimensional.
    """
    try:
        view = memoryview(audio)
    except TypeError:
        if convert:
            return _via_numpy(audio)
        raise ValueError(f"expected int16 samples, got {describe(audio)}") from None
    if view.format in _RAW_FORMATS and view.ndim == 1:
        if view.nbytes % 2:
            raise ValueError(f"raw int16 audio must be an even number of bytes, not {view.nbytes}")
        return (view if view.c_contiguous else memoryview(view.tobytes())).cast("B").cast("h")
    if view.format not in _INT16_FORMATS:
        if convert:
            return _via_numpy(audio)
        raise ValueError(f"expected int16 samples, got {describe(audio)}")
    if view.ndim != 1:
        raise ValueError(f"expected 1-D int16 samples, got {view.ndim}-D")
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view if view.format == "h" else view.cast("B").cast("h")


def _via_numpy(audio: Any) -> memoryview:
    import numpy as np

    samples = np.ascontiguousarray(audio, dtype=np.int16)
    if samples.ndim != 1:
        raise ValueError(f"expected 1-D int16 samples, got {samples.ndim}-D {samples.dtype}")
    return memoryview(samples)  # type: ignore[arg-type]  # a buffer; typed so from 3.12


def describe(audio: object) -> str:
    """What ``audio`` is, for an error message: its shape and sample format."""
    try:
        view = memoryview(audio)  # type: ignore[arg-type]
    except TypeError:
        return type(audio).__name__
    return f"{type(audio).__name__} of {view.ndim}-D shape {view.shape}, format {view.format!r}"


def to_ndarray(audio: AudioBuffer) -> Int16Array:
    """``audio``'s samples as a 1-D int16 numpy array sharing its memory (imports numpy).

    Writable when ``audio`` is (an ``array('h')``), read-only over ``bytes``.
    """
    import numpy as np

    return np.frombuffer(as_samples(audio), dtype=np.int16)
