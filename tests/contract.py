"""Payload examples from shared/whatsapp-calling.md, for tests."""

from __future__ import annotations

import secrets


def meta_offer(fmtp: str = "minptime=10;useinbandfec=1") -> str:
    """The contract's example user-initiated offer (section 4), with a well-formed fingerprint."""
    fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
    lines = [
        "v=0",
        "o=- 1747816423 1747816423 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE audio",
        "a=msid-semantic: WMS 2d7c9b",
        "a=ice-lite",
        "m=audio 40012 UDP/TLS/RTP/SAVPF 111 126",
        "c=IN IP4 31.13.65.60",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:1 1 udp 2113937151 31.13.65.60 40012 typ host generation 0 network-cost 50",
        "a=ice-ufrag:6k2qP1R6kBfI",
        "a=ice-pwd:b6mOpV0cUKt1h+GXrn5GfU",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:actpass",
        "a=mid:audio",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        f"a=fmtp:111 {fmtp}",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:2251211437 cname:WhatsAppAudioStream1",
    ]
    return "\r\n".join(lines) + "\r\n"
