"""libopus itself, through ctypes: the few calls the gateway's Opus codec needs.

Why not PyAV's codec: FFmpeg's libopus wrapper always decodes at 48 kHz (and
the gateway then had to resample to 16 kHz mono, which cost nearly as much as
the decode), and each frame through PyAV allocates an ``AudioFrame``, a
``Packet`` and their buffers. libopus decodes straight to 16 kHz mono and
encodes from it, into and out of buffers made once per codec.

The library is the libopus that the pinned PyAV wheel ships (``av.libs/``), so
nothing new is installed; a system ``libopus.so.0`` is the fallback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path
from typing import Final

import av

APPLICATION_VOIP: Final = 2048
OK: Final = 0
BUFFER_TOO_SMALL: Final = -2

# opus_defines.h request codes for opus_encoder_ctl.
SET_BITRATE: Final = 4002
SET_VBR: Final = 4006
SET_COMPLEXITY: Final = 4010
SET_VBR_CONSTRAINT: Final = 4020
GET_LOOKAHEAD: Final = 4027


class OpusLibraryError(RuntimeError):
    """libopus could not be loaded or refused a call (the message names which)."""


def _library_candidates() -> list[str]:
    bundled = Path(av.__file__).resolve().parent.parent / "av.libs"
    found = sorted(str(p) for p in bundled.glob("libopus*.so*"))
    system = ctypes.util.find_library("opus")
    return found + ([system] if system else []) + ["libopus.so.0"]


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded libopus, with the signatures used here declared (loaded once)."""
    errors = []
    for path in _library_candidates():
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    else:
        raise OpusLibraryError("libopus not found: " + "; ".join(errors))
    p, i, i32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int32
    ip = ctypes.POINTER(ctypes.c_int)
    lib.opus_decoder_create.argtypes = [i32, i, ip]
    lib.opus_decoder_create.restype = p
    lib.opus_decoder_destroy.argtypes = [p]
    lib.opus_decoder_destroy.restype = None
    # (decoder, data or NULL for concealment, length, pcm out, frame_size, decode_fec)
    lib.opus_decode.argtypes = [p, ctypes.c_char_p, i32, p, i, i]
    lib.opus_decode.restype = i
    lib.opus_encoder_create.argtypes = [i32, i, i, ip]
    lib.opus_encoder_create.restype = p
    lib.opus_encoder_destroy.argtypes = [p]
    lib.opus_encoder_destroy.restype = None
    # (encoder, pcm in, frame_size, data out, max_data_bytes)
    lib.opus_encode.argtypes = [p, p, i, p, i32]
    lib.opus_encode.restype = i32
    # opus_encoder_ctl is variadic; each request here takes one int (or int*).
    lib.opus_encoder_ctl.restype = i
    lib.opus_strerror.argtypes = [i]
    lib.opus_strerror.restype = ctypes.c_char_p
    return lib


def strerror(code: int) -> str:
    """libopus' message for an error code."""
    message: bytes = library().opus_strerror(code)
    return message.decode(errors="replace")


def check(code: int, what: str) -> int:
    """``code`` if it is not an error, else OpusLibraryError naming ``what``."""
    if code < 0:
        raise OpusLibraryError(f"libopus {what}: {strerror(code)} ({code})")
    return code
