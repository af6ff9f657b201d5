"""SRTP for the per-packet path: aiortc's libsrtp sessions, called without per-call allocations.

aiortc protects and unprotects RTP through pylibsrtp's ``Session``, whose every
call checks the packet's type, takes its length four times, allocates a fresh
``int *`` for libsrtp's in/out length and goes through two Python methods.
:class:`SrtpCalls` makes the same libsrtp call (``srtp_protect`` /
``srtp_unprotect``) on the same session (so the same keys, replay window and
rollover counter) with a buffer and a length cell made once. The bytes are
those of pylibsrtp's own methods (tested side by side). The RTCP pair
(``srtp_protect_rtcp`` / ``srtp_unprotect_rtcp``) is there too, for
:mod:`gateway.media.rtcp`, under pylibsrtp's names.

This reads two private names of pylibsrtp 1.0 (the session's ``_srtp`` handle
and its cffi binding); :func:`srtp_calls` returns None if they are not there,
and the caller then keeps pylibsrtp's methods.
"""

from __future__ import annotations

from typing import Any, Final

import pylibsrtp

try:
    from pylibsrtp import _binding
except ImportError:  # pragma: no cover - another pylibsrtp layout
    _binding = None

_BUFFER: Final = 1500  # pylibsrtp's own buffer size
_MAX_PROTECT: Final = _BUFFER - pylibsrtp.SRTP_MAX_TRAILER_LEN
_MAX_PROTECT_RTCP: Final = _BUFFER - pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN


class SrtpCalls:
    """``protect``/``unprotect`` (and the ``_rtcp`` pair) on an existing pylibsrtp session."""

    def __init__(self, session: pylibsrtp.Session, binding: Any) -> None:
        ffi, lib = binding.ffi, binding.lib
        self._session = session  # owns libsrtp's state; keep it alive
        self._srtp = session._srtp[0]
        self._cdata = ffi.new("char[]", _BUFFER)
        self._buffer = ffi.buffer(self._cdata)
        self._length = ffi.new("int *")
        self._protect = lib.srtp_protect
        self._unprotect = lib.srtp_unprotect
        self._protect_rtcp = lib.srtp_protect_rtcp
        self._unprotect_rtcp = lib.srtp_unprotect_rtcp

    def protect(self, packet: bytes) -> bytes:
        """The SRTP packet for an RTP packet (pylibsrtp's ``Session.protect``)."""
        return self._call(self._protect, packet, _MAX_PROTECT)

    def unprotect(self, packet: bytes) -> bytes:
        """The RTP packet in an SRTP packet; pylibsrtp.Error if it fails authentication."""
        return self._call(self._unprotect, packet, _BUFFER)

    def protect_rtcp(self, packet: bytes) -> bytes:
        """The SRTCP packet for an RTCP compound (pylibsrtp's ``Session.protect_rtcp``)."""
        return self._call(self._protect_rtcp, packet, _MAX_PROTECT_RTCP)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """The RTCP compound in an SRTCP packet; pylibsrtp.Error if it fails authentication."""
        return self._call(self._unprotect_rtcp, packet, _BUFFER)

    def _call(self, function: Any, packet: bytes, limit: int) -> bytes:
        size = len(packet)
        if size > limit:
            raise ValueError("packet is too long")
        self._buffer[0:size] = packet
        length = self._length
        length[0] = size
        status = function(self._srtp, self._cdata, length)
        if status:
            raise pylibsrtp.Error(pylibsrtp.ERRORS[status])
        result: bytes = self._buffer[0 : length[0]]
        return result


def srtp_calls(session: pylibsrtp.Session) -> SrtpCalls | pylibsrtp.Session:
    """A lean caller of ``session`` if this pylibsrtp allows it, else the session itself."""
    if _binding is None or not hasattr(session, "_srtp"):
        return session
    return SrtpCalls(session, _binding)
