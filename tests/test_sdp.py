"""The contract's SDP rules, on the contract's own example offer."""

from __future__ import annotations

import pytest

from gateway import sdp
from gateway.errors import SDPError
from gateway.sandbox.user_sdp import whatsapp_offer

from .contract import meta_offer

META_OFFER = meta_offer("minptime=10;useinbandfec=1;maxaveragebitrate=16000;maxplaybackrate=16000")
FINGERPRINT_LINE = next(line for line in META_OFFER.split("\r\n") if "fingerprint" in line)


def test_meta_offer_is_valid_and_its_parameters_are_read() -> None:
    sdp.validate_offer(META_OFFER)
    assert sdp.mids(META_OFFER) == ["audio"]
    assert sdp.payload_type(META_OFFER, "opus") == 111
    assert sdp.payload_type(META_OFFER, "telephone-event") == 126
    assert sdp.opus_bitrate(META_OFFER) == 16000
    assert sdp.opus_bitrate(META_OFFER.replace("maxaveragebitrate=16000", "x=1")) == 20000
    assert sdp.opus_bitrate(META_OFFER.replace("16000;maxplay", "1;maxplay")) == 6000


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("hello", "v= line"),
        (META_OFFER.replace("m=audio", "m=video"), "exactly one audio m-line"),
        (META_OFFER.replace("opus/48000/2", "PCMU/8000"), "Opus"),
        (META_OFFER.replace(FINGERPRINT_LINE + "\r\n", ""), "fingerprint"),
        (META_OFFER.replace("a=ice-ufrag:6k2qP1R6kBfI\r\n", ""), "ice-ufrag"),
    ],
)
def test_bad_offers_are_refused_precisely(broken: str, message: str) -> None:
    with pytest.raises(SDPError, match=message) as err:
        sdp.validate_offer(broken)
    assert err.value.code == 100


def test_answer_keeps_one_sha256_fingerprint_with_crlf() -> None:
    answer = (
        "v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\na=fingerprint:sha-256 AA\n"
        "a=fingerprint:sha-384 BB\na=fingerprint:sha-512 CC\na=setup:active\na=mid:audio\n"
    )
    out = sdp.prepare_answer(answer)
    assert out.count("a=fingerprint:") == 1 and "a=fingerprint:sha-256 AA\r\n" in out
    assert out.endswith("\r\n") and "\n" not in out.replace("\r\n", "")
    with pytest.raises(SDPError, match="setup:active"):
        sdp.prepare_answer(answer.replace("a=setup:active", "a=setup:passive"))
    with pytest.raises(SDPError, match="sha-256"):
        sdp.prepare_answer(answer.replace("sha-256", "sha-1"))


def test_sandbox_offers_look_like_whatsapp() -> None:
    aiortc_like = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
        "m=audio 5000 UDP/TLS/RTP/SAVPF 111 126\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n"
        "a=rtpmap:126 telephone-event/8000\r\na=fingerprint:sha-256 AA\r\n"
        "a=fingerprint:sha-384 BB\r\na=ice-ufrag:x\r\na=setup:actpass\r\n"
    )
    out = whatsapp_offer(aiortc_like)
    assert "a=mid:audio" in out and "a=group:BUNDLE audio" in out and "a=ice-lite" in out
    assert out.count("a=fingerprint:") == 1
    assert sdp.opus_bitrate(out) == 20000 and "useinbandfec=1" in out
    sdp.validate_offer(out)
