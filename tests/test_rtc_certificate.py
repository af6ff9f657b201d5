"""One DTLS certificate (and OpenSSL context) for every call of a gateway process."""

from __future__ import annotations

import asyncio
import datetime
import re

import pytest
from OpenSSL import SSL
from OpenSSL._util import lib

from gateway import rtc
from gateway.media.audio import load_wav

from .conftest import AUDIO, Stack, answered_call


def _fingerprint(sdp: str) -> str:
    found = re.findall(r"^a=fingerprint:(\S+ \S+)\r?$", sdp, re.MULTILINE)
    assert len(found) == 1, sdp
    return str(found[0])


async def test_two_calls_present_one_certificate_and_both_carry_media(stack: Stack) -> None:
    first = await answered_call(stack, "15551230001", "Ana")
    second = await answered_call(stack, "15551230002", "Ben")

    answers = [stack.sandbox.actions(c.call_id)[-1].body["session"]["sdp"] for c in (first, second)]
    fingerprints = {_fingerprint(sdp) for sdp in answers}
    process = rtc.certificate().getFingerprints()
    assert fingerprints == {f"sha-256 {f.value}" for f in process if f.algorithm == "sha-256"}
    # The simulated phones are parties of their own, each with its own certificate.
    offers = {_fingerprint(c.offer_sdp) for c in (first, second)}
    assert len(offers) == 2 and not offers & fingerprints
    # Both DTLS transports were made from the one context.
    assert len(rtc.certificate()._contexts) == 1

    # Both calls at once, both ways: SRTP keyed by each call's own handshake.
    speech = load_wav(AUDIO / "cards-001.wav")[: 16000 * 2]
    await asyncio.gather(first.play(speech).wait(), second.play(speech).wait())
    await asyncio.sleep(0.3)
    for call in (first, second):
        gw_call = stack.gateway.calls.get(call.call_id)
        assert gw_call.inbound is not None and call.inbound is not None
        assert gw_call.inbound.stats.packets >= len(speech) // 320
        assert gw_call.inbound.stats.decode_errors == 0
        assert call.inbound.stats.packets > 20
        # Its DTLS connection gives its record buffers back between records (about
        # 40 KiB a call); SSL_set_mode returns the mode, and 0 adds nothing.
        dtls = gw_call.pc.getTransceivers()[0].receiver.transport._ssl
        assert lib.SSL_set_mode(dtls._ssl, 0) & SSL.MODE_RELEASE_BUFFERS
    for call in (first, second):
        await call.hang_up()


def test_certificate_is_renewed_before_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    current = rtc.certificate()
    assert rtc.certificate() is current
    # aiortc's certificates are valid 30 days: asking for 31 left means "expiring".
    monkeypatch.setattr(rtc, "CERTIFICATE_RENEW_BEFORE", datetime.timedelta(days=31))
    renewed = rtc.certificate()
    assert renewed is not current
    assert renewed.getFingerprints()[0].value != current.getFingerprints()[0].value
    monkeypatch.undo()
    assert rtc.certificate() is renewed
    pc = rtc.new_peer_connection()
    assert pc._RTCPeerConnection__certificates == [renewed]


async def test_a_gateway_peer_connection_makes_no_key_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aiortc.rtcpeerconnection
    from aiortc.rtcdtlstransport import RTCCertificate

    process = rtc.certificate()
    made: list[RTCCertificate] = []
    generate = RTCCertificate.generateCertificate

    def counting() -> RTCCertificate:
        made.append(generate())
        return made[-1]

    monkeypatch.setattr(RTCCertificate, "generateCertificate", counting)
    pc = rtc.new_peer_connection()
    try:
        # aiortc's __init__ made no key (about 0.3 ms per call) and presents the process's.
        assert made == []
        assert pc._RTCPeerConnection__certificates == [process]  # type: ignore[attr-defined]
        assert aiortc.rtcpeerconnection.RTCCertificate is RTCCertificate  # put back
    finally:
        await pc.close()
    phone = rtc.new_peer_connection(shared_certificate=False)
    try:
        # A separate party (the sandbox's phones) still makes its own.
        assert len(made) == 1
        assert phone._RTCPeerConnection__certificates == made  # type: ignore[attr-defined]
    finally:
        await phone.close()


def test_the_process_certificate_is_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiortc.rtcdtlstransport as dtls

    key = dtls.ec.generate_private_key(dtls.ec.SECP256R1())
    certificate = rtc.SharedCertificate(key, dtls.generate_certificate(key))
    stock = dtls.RTCCertificate(key, certificate._cert).getFingerprints()
    digests: list[str] = []
    digest = dtls.certificate_digest

    def counted(cert: object, algorithm: str) -> str:
        digests.append(algorithm)
        return digest(cert, algorithm)  # type: ignore[arg-type]

    monkeypatch.setattr(dtls, "certificate_digest", counted)
    # aiortc reads a call's DTLS parameters several times: no hashing each time.
    first, second = certificate.getFingerprints(), certificate.getFingerprints()
    assert digests == []
    assert first == second == stock  # aiortc's algorithms, values and order
    assert first[0] is not second[0]  # each caller gets objects of its own
