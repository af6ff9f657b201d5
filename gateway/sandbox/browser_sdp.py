"""SDP between the browser phone and the gateway: the browser's form <-> WhatsApp's form.

The sandbox plays Meta: it rewrites the browser's offer into the form WhatsApp
sends (``a=mid:audio``, only Opus/111 and ``telephone-event/8000``/126, one
sha-256 fingerprint, WhatsApp's header extensions), with the media edge's
address as the only candidate, and hands the gateway's answer back to the
browser with the browser's own mid.
"""

from __future__ import annotations

import ipaddress
import re

from .. import rtc, sdp
from ..errors import SDPError
from .relay import Address, is_loopback
from .user_sdp import WHATSAPP_OPUS_FMTP

# Header extensions WhatsApp's offers carry (shared/whatsapp-calling.md, section 4).
# Chrome's sdes:mid must go: the gateway would tag its RTP with mid "audio",
# which the browser, whose mid is "0", would not route.
WHATSAPP_EXTENSIONS = frozenset(
    {
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    }
)
# Browser offer lines WhatsApp's offers never carry.
_DROPPED_PREFIXES = ("a=extmap-allow-mixed", "a=ice-options:", "a=rtcp-rsize", "a=rtcp-xr:")
_CANDIDATE = re.compile(
    r"a=candidate:\S+ (?P<component>\d+) (?P<transport>\S+) \d+ "
    r"(?P<address>\S+) (?P<port>\d+) typ (?P<type>\S+)"
)


def browser_candidates(offer: str) -> list[Address]:
    """The browser's candidates the media edge will talk to.

    UDP host candidates with literal addresses (aioice would resolve mDNS names
    with multicast queries), and only the loopback ones when there are any
    (Chromium with --allow-loopback-in-peer-connection): then nothing but
    loopback is ever answered.
    """
    found: list[Address] = []
    for line in sdp.lines(offer):
        m = _CANDIDATE.match(line)
        if not m or m["component"] != "1" or m["transport"].lower() != "udp":
            continue
        if m["type"] != "host":
            continue
        try:
            ipaddress.ip_address(m["address"])
        except ValueError:
            continue
        found.append((m["address"], int(m["port"])))
    loopback = [c for c in found if is_loopback(c[0])]
    return loopback or found


def _rtpmap_pt(lines: list[str], encoding: str) -> int | None:
    # The payload type of an exact encoding such as telephone-event/8000.
    for line in lines:
        m = re.match(r"a=rtpmap:(\d+) (\S+)", line)
        if m and m.group(2).lower().startswith(encoding.lower()):
            return int(m.group(1))
    return None


def _with_candidate(lines: list[str], edge: Address) -> list[str]:
    # Every candidate replaced by the media edge's one address, as Meta's SDP
    # names its own servers and never the other party.
    host, port = edge
    family = "IP6" if ":" in host else "IP4"
    candidate = f"a=candidate:1 1 udp 2113937151 {host} {port} typ host generation 0"
    out: list[str] = []
    for line in lines:
        if line.startswith(("a=candidate:", "a=end-of-candidates")):
            continue
        if line.startswith("m=audio "):
            parts = line.split(" ")
            line = " ".join([parts[0], str(port), *parts[2:]])
        elif line.startswith("c="):
            line = f"c=IN {family} {host}"
        out.append(line)
        if line.startswith("a=ice-pwd:"):
            out.append(candidate)
    if candidate not in out:
        raise SDPError("the SDP has no a=ice-pwd line in its media section")
    return out


def browser_offer_to_whatsapp(offer: str, edge: Address) -> str:
    """Rewrite a browser's SDP offer into the form the Cloud API delivers.

    ``edge`` is the media edge's address toward the gateway. Raises SDPError when
    the browser's offer cannot become a WhatsApp offer.
    """
    sdp.validate_offer(offer)
    mids = sdp.mids(offer)
    if len(mids) != 1:
        raise SDPError(f"expected one media section, found {len(mids)}")
    lines = sdp.lines(offer)
    if _rtpmap_pt(lines, "opus/48000/2") != rtc.OPUS_PT:
        raise SDPError(f"the browser must offer opus/48000/2 on payload type {rtc.OPUS_PT}")
    if _rtpmap_pt(lines, "telephone-event/8000") != rtc.DTMF_PT:
        raise SDPError(f"the browser must offer telephone-event/8000 on payload type {rtc.DTMF_PT}")
    kept_pts = {str(rtc.OPUS_PT), str(rtc.DTMF_PT)}
    out: list[str] = []
    for line in lines:
        if line.startswith(_DROPPED_PREFIXES):
            continue
        if line.startswith("m=audio "):
            parts = line.split(" ")
            out.append(" ".join([*parts[:3], str(rtc.OPUS_PT), str(rtc.DTMF_PT)]))
            continue
        m = re.match(r"a=(rtpmap|fmtp|rtcp-fb):(\d+) ", line)
        if m and m.group(2) not in kept_pts:
            continue
        if m and m.group(1) == "fmtp" and m.group(2) == str(rtc.OPUS_PT):
            continue  # replaced by WhatsApp's Opus parameters after the rtpmap
        ext = re.match(r"a=extmap:\d+(?:/\S+)? (\S+)", line)
        if ext and ext.group(1) not in WHATSAPP_EXTENSIONS:
            continue
        out.append(line)
        if line.startswith(f"a=rtpmap:{rtc.OPUS_PT} "):
            out.append(f"a=fmtp:{rtc.OPUS_PT} {WHATSAPP_OPUS_FMTP}")
    text = sdp.join(_with_candidate(out, edge))
    return sdp.keep_fingerprint(sdp.rename_mid(text, mids[0], "audio"))


def whatsapp_answer_to_browser(answer: str, browser_mid: str, edge: Address) -> str:
    """The business's answer as the browser needs it: its own mid, the edge's address."""
    text = sdp.join(_with_candidate(sdp.lines(answer), edge))
    return sdp.rename_mid(text, "audio", browser_mid)


def answer_address(answer: str) -> Address | None:
    """The first UDP host candidate of an SDP answer (where the gateway listens)."""
    for line in sdp.lines(answer):
        m = _CANDIDATE.match(line)
        if m and m["component"] == "1" and m["transport"].lower() == "udp":
            return (m["address"], int(m["port"]))
    return None
