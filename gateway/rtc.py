"""aiortc set up the way WhatsApp needs it, and the peer connection factory.

Applied once per process: Opus on payload type 111 (what Meta and browsers use)
plus ``telephone-event/8000`` on 126 (DTMF), nothing else; no STUN server (aiortc's
default is unreachable and delays every answer by seconds; Meta's side is
ICE-lite with public host candidates); and optionally a fixed list of host
addresses for ICE (the sandbox and tests stay on loopback).

Every call of the process presents one DTLS certificate (what browsers and SFUs
do): aiortc would otherwise make an ECDSA key and certificate for each peer
connection, and an OpenSSL context for each DTLS transport.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import aiortc.rtcpeerconnection as aiortc_pc
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.codecs import CODECS
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    SRTPProtectionProfile,
)
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

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


# A new process certificate is made when the current one has less than this left
# (aiortc's are valid 30 days); calls in progress keep the one they started with.
CERTIFICATE_RENEW_BEFORE = datetime.timedelta(days=1)


class SharedCertificate(RTCCertificate):
    """A certificate for many peer connections, with one OpenSSL context per SRTP
    profile list instead of one per DTLS transport.

    The context's session cache is off, as with aiortc's context per call: a
    shared cache would let a peer resume another call's DTLS session.

    Its connections release their read and write buffers (about 34 KiB each) when
    they are empty: after the handshake a call's DTLS carries no media (SRTP is
    keyed from it and goes its own way), only the odd alert or close_notify.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        super().__init__(key, cert)
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}
        # aiortc hashes the certificate three ways (sha-256/384/512) each time a call's
        # DTLS parameters are read, several times per call: once per certificate here.
        self._fingerprints = tuple(
            (f.algorithm, f.value) for f in RTCCertificate.getFingerprints(self)
        )

    def getFingerprints(self) -> list[RTCDtlsFingerprint]:
        """The certificate's fingerprints, as aiortc's (hashed once, fresh objects)."""
        return [RTCDtlsFingerprint(algorithm=a, value=v) for a, v in self._fingerprints]

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        profiles = tuple(p.openssl_profile for p in srtp_profiles)
        context = self._contexts.get(profiles)
        if context is None:
            context = super()._create_ssl_context(srtp_profiles)
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            self._contexts[profiles] = context
        return context


_certificate: SharedCertificate | None = None


def certificate() -> SharedCertificate:
    """The process's DTLS certificate (made on first use, renewed before it expires)."""
    global _certificate
    now = datetime.datetime.now(datetime.UTC)
    if _certificate is None or _certificate.expires - now < CERTIFICATE_RENEW_BEFORE:
        _certificate = SharedCertificate.generateCertificate()
    return _certificate


def new_peer_connection(*, shared_certificate: bool = True) -> RTCPeerConnection:
    """A peer connection with no STUN/TURN servers (host candidates only).

    It presents the process's certificate (:func:`certificate`); with
    ``shared_certificate=False`` one of its own, as a separate party would (the
    sandbox's simulated phones).
    """
    configure()
    if not shared_certificate:
        return RTCPeerConnection(RTCConfiguration(iceServers=[]))
    # aiortc 1.16 takes no certificate (RTCConfiguration has no `certificates`) and
    # makes a key and certificate in RTCPeerConnection.__init__ (about 0.3 ms of CPU
    # per call) that would be replaced at once: while the peer connection is made,
    # the name its __init__ looks up gives the process's certificate instead. Nothing
    # else runs meanwhile (no await). tests/test_rtc_certificate.py guards it.
    aiortc_pc.RTCCertificate = _ProcessCertificate  # type: ignore[attr-defined]
    try:
        return RTCPeerConnection(RTCConfiguration(iceServers=[]))
    finally:
        aiortc_pc.RTCCertificate = RTCCertificate  # type: ignore[attr-defined]


class _ProcessCertificate(RTCCertificate):
    """What ``RTCCertificate.generateCertificate`` gives while a gateway peer
    connection is made: the process's certificate, no new key."""

    @classmethod
    def generateCertificate(cls) -> SharedCertificate:  # type: ignore[override]
        return certificate()
