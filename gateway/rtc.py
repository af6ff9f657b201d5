"""aiortc set up the way WhatsApp needs it, and the peer connection factory.

Applied once per process: Opus on payload type 111 (what Meta and browsers use)
plus ``telephone-event/8000`` on 126 (DTMF), nothing else; no STUN server (aiortc's
default is unreachable and delays every answer by seconds; Meta's side is
ICE-lite with public host candidates); and optionally a fixed list of host
addresses for ICE (the sandbox and tests stay on loopback).
"""

from __future__ import annotations

from collections.abc import Sequence

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.codecs import CODECS
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from .media.dtmf import DTMF_PAYLOAD_TYPE, add_telephone_event_codec
from .media.ice import use_host_addresses

OPUS_PT = 111
DTMF_PT = DTMF_PAYLOAD_TYPE

_configured = False


def configure(media_addresses: Sequence[str] = ()) -> None:
    """Configure aiortc for WhatsApp; call before creating peer connections."""
    global _configured
    if media_addresses:
        use_host_addresses(list(media_addresses))
    if _configured:
        return
    # Opus only (Meta always offers it); G.711/G.722 would only widen the answer.
    CODECS["audio"][:] = [
        RTCRtpCodecParameters(
            mimeType="audio/opus", clockRate=48000, channels=2, payloadType=OPUS_PT
        )
    ]
    add_telephone_event_codec(DTMF_PT)
    _configured = True


def new_peer_connection() -> RTCPeerConnection:
    """A peer connection with no STUN/TURN servers (host candidates only)."""
    configure()
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))
