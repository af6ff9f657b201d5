"""The simulated phone's SDP: offers in WhatsApp's form, broken on purpose, or routed via a relay.

The sandbox's users are aiortc peers; their offers are rewritten into the form
WhatsApp sends (``a=mid:audio``, Opus on 111 with WhatsApp's parameters,
ICE-lite, one sha-256 fingerprint), which is what the gateway must handle. A
fault test breaks an offer on purpose (:class:`MediaFault`); an impaired network
puts the media relay's address in it (:func:`via`).
"""

from __future__ import annotations

import re
from enum import StrEnum

from .. import rtc, sdp
from .relay import Address

__all__ = [
    "WHATSAPP_OPUS_FMTP",
    "MediaFault",
    "break_offer",
    "first_candidate",
    "renumber_payload_types",
    "via",
    "whatsapp_offer",
]

# Opus parameters Meta's offers carry (shared/whatsapp-calling.md, section 4).
WHATSAPP_OPUS_FMTP = (
    "minptime=10;useinbandfec=1;maxaveragebitrate=20000;"
    "maxplaybackrate=16000;sprop-maxcapturerate=16000"
)


def whatsapp_offer(aiortc_offer: str) -> str:
    """Rewrite an aiortc offer into the form WhatsApp sends."""
    text = sdp.keep_fingerprint(sdp.rename_mid(aiortc_offer, "0", "audio"))
    out: list[str] = []
    for line in sdp.lines(text):
        if line.startswith(f"a=fmtp:{rtc.OPUS_PT} "):
            continue
        out.append(line)
        if line.startswith("t="):
            out.append("a=ice-lite")
        elif line.startswith(f"a=rtpmap:{rtc.OPUS_PT} "):
            out.append(f"a=fmtp:{rtc.OPUS_PT} {WHATSAPP_OPUS_FMTP}")
    return sdp.join(out)


def renumber_payload_types(offer: str, new: dict[int, int]) -> str:
    """The offer with its payload types renumbered (``{111: 96}``), as other peers do."""
    out: list[str] = []
    for line in sdp.lines(offer):
        if line.startswith("m="):
            parts = line.split(" ")
            line = " ".join(parts[:3] + [str(new.get(int(p), int(p))) for p in parts[3:]])
        else:
            m = re.match(r"a=(rtpmap|fmtp|rtcp-fb):(\d+)( .*)", line)
            if m and int(m.group(2)) in new:
                line = f"a={m.group(1)}:{new[int(m.group(2))]}{m.group(3)}"
        out.append(line)
    return sdp.join(out)


class MediaFault(StrEnum):
    """A phone's media broken on purpose, for the fault tests."""

    NO_ICE = "no_ice"
    """The offer's candidate leads nowhere and the phone never checks: ICE never completes."""
    BAD_DTLS = "bad_dtls"
    """The offer's fingerprint is not the phone's certificate: the DTLS handshake fails."""


def break_offer(offer: str, fault: MediaFault) -> str:
    """The offer with its media broken as ``fault`` says."""
    out: list[str] = []
    for line in sdp.lines(offer):
        if fault is MediaFault.NO_ICE and line.startswith("a=candidate:"):
            fields = line.split(" ")
            fields[5] = "9"  # the discard port: nobody answers there
            line = " ".join(fields)
        elif fault is MediaFault.BAD_DTLS and line.startswith("a=fingerprint:sha-256 "):
            line = "a=fingerprint:sha-256 " + ":".join(["5A"] * 32)
        out.append(line)
    return sdp.join(out)


def first_candidate(text: str) -> Address:
    """The address of the SDP's first ICE candidate."""
    for line in sdp.lines(text):
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            return (fields[4], int(fields[5]))
    raise ValueError("the SDP has no candidate")


def via(text: str, edge: Address) -> str:
    """The SDP with ``edge`` as its only candidate."""
    # One candidate, the media edge's: the other side only ever talks to the relay.
    out: list[str] = []
    seen = False
    for line in sdp.lines(text):
        if line.startswith("a=candidate:"):
            if seen:
                continue
            fields = line.split(" ")
            fields[4], fields[5] = edge[0], str(edge[1])
            line, seen = " ".join(fields), True
        out.append(line)
    return sdp.join(out)
