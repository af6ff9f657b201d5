"""SDP rules of the WhatsApp contract, applied as text.

aiortc builds correct SDP, but not quite what Meta accepts: it lists three
fingerprints (Meta refuses any but one ``sha-256``) and it must keep mids as
strings (Meta uses ``a=mid:audio``). These helpers adjust the text at the edge.
"""

from __future__ import annotations

import re

from .errors import SDPError

CRLF = "\r\n"


def lines(sdp: str) -> list[str]:
    """The SDP's lines without line endings (accepts CRLF or LF)."""
    return [line for line in re.split(r"\r?\n", sdp.strip()) if line]


def join(sdp_lines: list[str]) -> str:
    """SDP text with CRLF line endings, as the Cloud API wants it."""
    return CRLF.join(sdp_lines) + CRLF


def validate_offer(sdp: str) -> None:
    """Raise SDPError unless ``sdp`` is an offer the gateway can answer."""
    ls = lines(sdp)
    if not ls or not ls[0].startswith("v="):
        raise SDPError("SDP must start with a v= line")
    audio = [line for line in ls if line.startswith("m=audio ")]
    if len(audio) != 1:
        raise SDPError(f"expected exactly one audio m-line, found {len(audio)}")
    if not any(re.match(r"a=rtpmap:\d+ opus/48000", line, re.IGNORECASE) for line in ls):
        raise SDPError("the offer does not carry Opus (opus/48000)")
    if not any(line.startswith("a=fingerprint:") for line in ls):
        raise SDPError("the offer has no a=fingerprint line (DTLS-SRTP is required)")
    if not any(line.startswith("a=ice-ufrag:") for line in ls):
        raise SDPError("the offer has no a=ice-ufrag line")


def keep_fingerprint(sdp: str, algorithm: str = "sha-256") -> str:
    """Drop every ``a=fingerprint`` line but the one with ``algorithm``."""
    prefix = f"a=fingerprint:{algorithm} "
    out = [ln for ln in lines(sdp) if not ln.startswith("a=fingerprint:") or ln.startswith(prefix)]
    if sum(ln.startswith(prefix) for ln in out) != 1:
        raise SDPError(f"expected exactly one {algorithm} fingerprint")
    return join(out)


def prepare_answer(sdp: str) -> str:
    """Make aiortc's answer acceptable to Meta: one sha-256 fingerprint, setup:active, CRLF."""
    out = []
    for line in lines(keep_fingerprint(sdp)):
        if line.startswith("a=setup:") and line != "a=setup:active":
            # We answer Meta's actpass as the DTLS client; anything else is refused.
            raise SDPError(f"answer has {line}, expected a=setup:active")
        out.append(line)
    return join(out)


def rename_mid(sdp: str, old: str, new: str) -> str:
    """Rename a media id in ``a=mid`` and ``a=group:BUNDLE`` lines."""
    out = []
    for line in lines(sdp):
        if line == f"a=mid:{old}":
            line = f"a=mid:{new}"
        elif line.startswith("a=group:BUNDLE"):
            parts = line.split(" ")
            line = " ".join([parts[0], *(new if p == old else p for p in parts[1:])])
        out.append(line)
    return join(out)


def mids(sdp: str) -> list[str]:
    """The media ids in order."""
    return [line[len("a=mid:") :] for line in lines(sdp) if line.startswith("a=mid:")]


def fmtp(sdp: str, payload_type: int) -> dict[str, str]:
    """The ``a=fmtp`` parameters of one payload type (e.g. Opus's maxaveragebitrate)."""
    prefix = f"a=fmtp:{payload_type} "
    for line in lines(sdp):
        if line.startswith(prefix):
            params = {}
            for part in line[len(prefix) :].split(";"):
                key, _, value = part.strip().partition("=")
                if key:
                    params[key] = value
            return params
    return {}


def payload_type(sdp: str, encoding: str) -> int | None:
    """The payload type an ``a=rtpmap`` assigns to ``encoding`` (e.g. ``opus``), if any."""
    for line in lines(sdp):
        m = re.match(r"a=rtpmap:(\d+) ([^/]+)/", line)
        if m and m.group(2).lower() == encoding.lower():
            return int(m.group(1))
    return None


# What libopus can do; Meta's offers ask for 20000.
_MIN_OPUS_BITRATE, _MAX_OPUS_BITRATE = 6000, 510000


def opus_bitrate(sdp: str, default: int = 20000) -> int:
    """The Opus bitrate the remote side asks for (``maxaveragebitrate``), clamped."""
    pt = payload_type(sdp, "opus")
    if pt is None:
        return default
    raw = fmtp(sdp, pt).get("maxaveragebitrate")
    try:
        value = int(raw) if raw else default
    except ValueError:
        return default
    return max(_MIN_OPUS_BITRATE, min(_MAX_OPUS_BITRATE, value))
