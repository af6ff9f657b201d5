"""SrtpCalls gives byte for byte what pylibsrtp's own Session methods give."""

from __future__ import annotations

import pylibsrtp
import pytest
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

from gateway.media.srtp import SrtpCalls, srtp_calls

KEY = bytes(range(30))


def session(direction: int) -> Session:
    return Session(Policy(key=KEY, ssrc_type=direction))


def packets() -> list[bytes]:
    return [
        RtpPacket(
            payload_type=111,
            sequence_number=(65530 + i) & 0xFFFF,
            timestamp=960 * i,
            ssrc=0x1234,
            payload=bytes([i]) * (i * 7 % 200),
        ).serialize()
        for i in range(20)
    ]


def test_protect_and_unprotect_match_pylibsrtp() -> None:
    theirs = session(Policy.SSRC_ANY_OUTBOUND)
    ours = srtp_calls(session(Policy.SSRC_ANY_OUTBOUND))
    assert isinstance(ours, SrtpCalls)
    receiver = srtp_calls(session(Policy.SSRC_ANY_INBOUND))
    for packet in packets():  # the sequence numbers wrap: the rollover counter too
        protected = ours.protect(packet)
        assert protected == theirs.protect(packet)
        assert receiver.unprotect(protected) == packet


def test_failures_raise_what_pylibsrtp_raises() -> None:
    sender = srtp_calls(session(Policy.SSRC_ANY_OUTBOUND))
    receiver = srtp_calls(session(Policy.SSRC_ANY_INBOUND))
    protected = sender.protect(packets()[0])
    tampered = protected[:-1] + bytes([protected[-1] ^ 1])
    with pytest.raises(pylibsrtp.Error):
        receiver.unprotect(tampered)
    assert receiver.unprotect(protected) == packets()[0]
    with pytest.raises(pylibsrtp.Error):  # a replay
        receiver.unprotect(protected)
    with pytest.raises(ValueError):
        sender.protect(bytes(1500))


def test_rtcp_protect_and_unprotect_match_pylibsrtp() -> None:
    from aiortc.rtp import RtcpRrPacket, RtcpSdesPacket, RtcpSourceInfo

    compounds = [
        bytes(RtcpRrPacket(ssrc=0x1234 + i))
        + bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=0x1234 + i, items=[(1, b"x" * i)])]))
        for i in range(10)
    ]
    theirs = session(Policy.SSRC_ANY_OUTBOUND)
    ours = srtp_calls(session(Policy.SSRC_ANY_OUTBOUND))
    receiver = srtp_calls(session(Policy.SSRC_ANY_INBOUND))
    for compound in compounds:  # the SRTCP index goes up: each packet differs
        protected = ours.protect_rtcp(compound)
        assert protected == theirs.protect_rtcp(compound)
        assert receiver.unprotect_rtcp(protected) == compound
    tampered = protected[:-1] + bytes([protected[-1] ^ 1])
    with pytest.raises(pylibsrtp.Error):
        receiver.unprotect_rtcp(tampered)
    with pytest.raises(ValueError):  # room for SRTCP's longer trailer
        ours.protect_rtcp(bytes(1500 - pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN + 4))
