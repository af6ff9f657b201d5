"""WebRTC's VAD, straight from the webrtcvad-wheels package's ``_webrtcvad`` extension.

Both cores call its C function: the Python core through the extension's
``process`` (:data:`vad_process`), the compiled one through the address of
``WebRtcVad_Process`` itself (:func:`process_address`), on the state a
:class:`WebRtcVad` holds.
"""

from __future__ import annotations

import ctypes
from typing import Final

import _webrtcvad  # the webrtcvad-wheels package's extension (see WebRtcVad)

# WebRTC's VAD through its C function: ``Vad.is_speech`` is a Python wrapper that
# re-checks the frame's length, ~0.7 us of a frame's ~6.
vad_process: Final = _webrtcvad.process
_process_address: int | None = None


class WebRtcVad:
    """WebRTC's VAD state, made as ``webrtcvad.Vad(mode)`` makes it (``_vad`` is its capsule).

    The ``webrtcvad`` module itself is not imported: at import it looks its own
    version up with ``importlib.metadata`` (which brings ``zipfile``, ``csv`` and
    the email parser: 0.9 MiB that a gateway would keep for nothing). Its
    ``Vad`` is these three calls into the same extension.
    """

    def __init__(self, mode: int) -> None:
        self._vad = _webrtcvad.create()
        _webrtcvad.init(self._vad)
        _webrtcvad.set_mode(self._vad, mode)


def process_address() -> int:
    """The address of ``WebRtcVad_Process`` in the already loaded ``_webrtcvad``.

    ``ctypes`` hands back the same library, not a second copy.
    """
    global _process_address
    if _process_address is None:
        library = ctypes.CDLL(_webrtcvad.__file__)  # the loaded copy: dlopen counts a reference
        _process_address = ctypes.cast(library.WebRtcVad_Process, ctypes.c_void_p).value or 0
    return _process_address
