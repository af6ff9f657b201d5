"""RTCP of a call, as aiortc sends and reads it, without its per-packet objects.

aiortc builds a dataclass per RTCP packet and per report block, serializes
them through ``bytes()``, and reads the peer's compounds through
``RtcpPacket.parse`` (a dataclass each again) on its DTLS transport's task,
after aioice's queue. This module has the same bytes and effects with
``struct``:

- out: :func:`sender_report` (SR with sender info and no report blocks, then
  SDES with the CNAME, as aiortc's sender), :func:`receiver_report` (RR with
  one block per received SSRC, as aiortc's receiver: its ``highest_sequence``
  is the bare 16-bit ``max_seq``, without the cycles, as aiortc has it) and
  :func:`bye`; :mod:`gateway.media.reports` decides when;
- in: :func:`parse` reads a decrypted compound into tuples, accepting only
  what aiortc's parser accepts, and :func:`apply` makes the changes aiortc's
  handlers make (the receiver's ``lsr`` and remote-outbound stats from an SR;
  the sender's round-trip time and remote-inbound stats from a report block;
  the receiver's decoder stopped on a BYE; the stats objects made when
  ``getStats`` asks, for the gateway's own sender and receiver). A compound it does not take
  (feedback such as NACK, PLI or REMB, anything malformed, a receiver or sender
  not aiortc's own) is left to aiortc's ``_handle_rtcp_data``, which does
  what it always did with it.
"""

from __future__ import annotations

import datetime
import struct
import time
from collections.abc import Callable
from typing import Any, Final

from aiortc import RTCRtpReceiver, RTCRtpSender, clock
from aiortc.rtcdtlstransport import RtpRouter
from aiortc.rtcrtpsender import RTT_ALPHA
from aiortc.stats import (
    RTCRemoteInboundRtpStreamStats,
    RTCRemoteOutboundRtpStreamStats,
    RTCStats,
    RTCStatsReport,
)

SR: Final = 200
RR: Final = 201
SDES: Final = 202
BYE: Final = 203
RTPFB: Final = 205
PSFB: Final = 206

_HEADER: Final = struct.Struct("!BBH")
_SR_HEAD: Final = struct.Struct("!BBHLQLLL")  # header, SSRC, sender info
_RR_HEAD: Final = struct.Struct("!BBHL")
_SENDER_INFO: Final = struct.Struct("!LQLLL")  # SSRC, NTP, RTP, packets, octets
_BLOCK: Final = struct.Struct("!LLLLLL")  # SSRC, fraction|lost, highest, jitter, lsr, dlsr
_SSRC: Final = struct.Struct("!L")
_U32: Final = 0xFFFFFFFF

Block = tuple[int, int, int, int, int, int, int]
"""A report block: SSRC, fraction lost, packets lost, highest sequence, jitter, lsr, dlsr."""
Packet = tuple[Any, ...]
"""One parsed packet: ``(SR, ssrc, ntp, rtp, packets, octets, blocks)``,
``(RR, ssrc, blocks)``, ``(BYE, sources)``; SDES and unknown types are not kept."""


# --- out -------------------------------------------------------------------------------


def sdes_cname(ssrc: int, cname: str | None) -> bytes:
    """The SDES packet aiortc's sender puts after its SR (nothing without a CNAME)."""
    if cname is None:
        return b""
    value = cname.encode("utf8")
    payload = _SSRC.pack(ssrc) + struct.pack("!BB", 1, len(value)) + value + b"\x00\x00"
    payload += b"\x00" * (-len(payload) % 4)
    return _HEADER.pack(0x81, SDES, len(payload) // 4) + payload


def sender_report(
    ssrc: int, ntp: int, rtp: int, packets: int, octets: int, sdes: bytes = b""
) -> bytes:
    """An SR without report blocks, then ``sdes`` (see :func:`sdes_cname`)."""
    return _SR_HEAD.pack(0x80, SR, 6, ssrc, ntp, rtp, packets & _U32, octets & _U32) + sdes


def report_block(
    ssrc: int, fraction_lost: int, packets_lost: int, highest: int, jitter: int, lsr: int, dlsr: int
) -> bytes:
    """One reception report block (packets lost as 24-bit two's complement)."""
    if not 0 <= fraction_lost < 256:  # what struct's "B" refuses in aiortc's
        raise struct.error("fraction lost out of range")
    lost = (fraction_lost << 24) | (packets_lost & 0xFFFFFF)
    return _BLOCK.pack(ssrc, lost, highest, jitter, lsr, dlsr)


def receiver_report(ssrc: int, blocks: list[bytes]) -> bytes:
    """An RR from ``ssrc`` with the given report blocks."""
    count = len(blocks)
    return _RR_HEAD.pack((2 << 6) | count, RR, 1 + 6 * count, ssrc) + b"".join(blocks)


def bye(ssrc: int) -> bytes:
    """The BYE aiortc's sender sends when it stops."""
    return _RR_HEAD.pack(0x81, BYE, 1, ssrc)


# --- in --------------------------------------------------------------------------------


def _blocks(data: bytes, pos: int, count: int) -> list[Block]:
    blocks = []
    for ssrc, lost, highest, jitter, lsr, dlsr in _BLOCK.iter_unpack(data[pos : pos + 24 * count]):
        packets_lost = lost & 0xFFFFFF
        if packets_lost & 0x800000:
            packets_lost -= 1 << 24
        blocks.append((ssrc, lost >> 24, packets_lost, highest, jitter, lsr, dlsr))
    return blocks


def _sdes_ok(data: bytes, count: int) -> bool:
    # aiortc's RtcpSdesPacket.parse, reduced to whether it raises.
    pos = 0
    for _ in range(count):
        if len(data) < pos + 4:
            return False
        pos += 4
        while pos < len(data) - 1:
            kind, length = data[pos], data[pos + 1]
            pos += 2
            if len(data) < pos + length:
                return False
            pos += length
            if kind == 0:
                break
    return True


def parse(data: bytes) -> list[Packet] | None:
    """The SRs, RRs and BYEs of a decrypted compound; None for one to leave to aiortc.

    None if aiortc's ``RtcpPacket.parse`` would refuse it, or if it holds
    feedback (RTPFB, PSFB), whose handling stays aiortc's.
    """
    packets: list[Packet] = []
    pos, size = 0, len(data)
    while pos < size:
        if size < pos + 4:
            return None
        first, kind, length = _HEADER.unpack_from(data, pos)
        pos += 4
        end = pos + 4 * length
        if first >> 6 != 2 or size < end:
            return None
        count = first & 0x1F
        stop = end
        if first & 0x20:  # padding: its length is the payload's last byte
            pad = data[end - 1] if end > pos else 0
            if not pad or pad > end - pos:
                return None
            stop = end - pad
        payload_size = stop - pos
        if kind == SR:
            if payload_size != 24 + 24 * count:
                return None
            ssrc, ntp, rtp, sent, octets = _SENDER_INFO.unpack_from(data, pos)
            packets.append((SR, ssrc, ntp, rtp, sent, octets, _blocks(data, pos + 24, count)))
        elif kind == RR:
            if payload_size != 4 + 24 * count:
                return None
            ssrc = _SSRC.unpack_from(data, pos)[0]
            packets.append((RR, ssrc, _blocks(data, pos + 4, count)))
        elif kind == BYE:
            if payload_size < 4 * count:
                return None
            packets.append((BYE, list(struct.unpack_from(f"!{count}L", data, pos))))
        elif kind == SDES:
            if not _sdes_ok(data[pos:stop], count):
                return None
        elif kind in (RTPFB, PSFB):
            return None
        pos = end
    return packets


def apply(router: RtpRouter, data: bytes) -> bool:
    """Make the changes aiortc's handlers make for a decrypted compound, now.

    False (and nothing changed) for a compound to hand to aiortc's
    ``_handle_rtcp_data`` instead: see :func:`parse`.
    """
    packets = parse(data)
    if packets is None:
        return False
    senders, receivers = router.senders, router.ssrc_table
    # Who gets what, as aiortc's RtpRouter.route_rtcp: checked before anything changes.
    plan: list[tuple[Any, Packet]] = []
    for packet in packets:
        kind = packet[0]
        recipients: dict[Any, None] = {}
        if kind == SR:
            receiver = receivers.get(packet[1])
            if receiver is not None:
                recipients[receiver] = None
        elif kind == BYE:
            for source in packet[1]:
                receiver = receivers.get(source)
                if receiver is not None:
                    recipients[receiver] = None
        if kind != BYE:
            for block in packet[-1]:
                sender = senders.get(block[0])
                if sender is not None:
                    recipients[sender] = None
        for recipient in recipients:
            if not _stock(recipient):
                return False
            plan.append((recipient, packet))
    for recipient, packet in plan:
        if isinstance(recipient, RTCRtpSender):
            _report_blocks(recipient, packet[1], packet[-1])
        elif packet[0] == SR:
            _sender_info(recipient, packet)
        else:  # BYE
            recipient._RTCRtpReceiver__stop_decoder()
    return True


def _stock(recipient: object) -> bool:
    """Whether ``recipient`` handles RTCP with aiortc's own code (what is copied here)."""
    if isinstance(recipient, RTCRtpSender):
        return type(recipient)._handle_rtcp_packet is RTCRtpSender._handle_rtcp_packet
    if isinstance(recipient, RTCRtpReceiver):
        return type(recipient)._handle_rtcp_packet is RTCRtpReceiver._handle_rtcp_packet
    return False


def _sender_info(receiver: Any, packet: Packet) -> None:
    """aiortc's RTCRtpReceiver._handle_rtcp_packet for an SR."""
    _, ssrc, ntp, _rtp, sent, octets, _ = packet
    now = time.time()
    _stats(receiver, "_RTCRtpReceiver__stats", _remote_outbound, now, (ssrc, sent, octets, ntp))
    receiver._RTCRtpReceiver__lsr[ssrc] = (ntp >> 16) & _U32
    receiver._RTCRtpReceiver__lsr_time[ssrc] = now


def _report_blocks(sender: Any, ssrc: int, blocks: list[Block]) -> None:
    """aiortc's RTCRtpSender._handle_rtcp_packet for an RR's or SR's blocks."""
    own = sender._ssrc
    for block_ssrc, fraction_lost, packets_lost, _highest, jitter, lsr, dlsr in blocks:
        if block_ssrc != own:
            continue
        now = time.time()
        if sender._RTCRtpSender__lsr == lsr and dlsr:
            rtt = now - sender._RTCRtpSender__lsr_time - (dlsr / 65536)
            previous = sender._RTCRtpSender__rtt
            sender._RTCRtpSender__rtt = (
                rtt if previous is None else RTT_ALPHA * previous + (1 - RTT_ALPHA) * rtt
            )
        received = sender._RTCRtpSender__packet_count - packets_lost
        rtt = sender._RTCRtpSender__rtt
        values = (ssrc, received, packets_lost, jitter, rtt, fraction_lost)
        _stats(sender, "_RTCRtpSender__stats", _remote_inbound, now, values)


# --- the stats objects of what was read ------------------------------------------------------

StatsMaker = Callable[..., RTCStats]


def _stats(owner: Any, report: str, make: StatsMaker, now: float, values: tuple[Any, ...]) -> None:
    """Add what aiortc's handler adds to ``owner``'s stats report, or, if ``owner``'s
    class has ``rtcp_stats_on_demand``, keep the values until :func:`add_stats`
    (the gateway's calls rarely ask: the dataclass and datetimes are most of the cost)."""
    if getattr(type(owner), "rtcp_stats_on_demand", False):
        owner.__dict__.setdefault("_rtcp_stats", {})[make] = (now, values)
    else:
        getattr(owner, report).add(make(owner, clock.current_datetime(), *values))


def add_stats(owner: Any, report: RTCStatsReport) -> None:
    """Add to ``report`` the stats objects of the RTCP ``owner`` read since the last call,
    as aiortc's handlers would have made them (each stamped with when its packet was
    read), unless aiortc's own handler put a newer one there (RTCP over a TURN relay)."""
    pending: dict[StatsMaker, tuple[float, tuple[Any, ...]]] = owner.__dict__.pop("_rtcp_stats", {})
    for make, (at, values) in pending.items():
        stats = make(owner, datetime.datetime.fromtimestamp(at, datetime.UTC), *values)
        there = report.get(stats.id)
        if there is None or there.timestamp <= stats.timestamp:
            report.add(stats)


def _remote_outbound(
    receiver: Any, timestamp: datetime.datetime, ssrc: int, sent: int, octets: int, ntp: int
) -> RTCRemoteOutboundRtpStreamStats:
    return RTCRemoteOutboundRtpStreamStats(
        timestamp=timestamp,
        type="remote-outbound-rtp",
        id=f"remote-outbound-rtp_{id(receiver)}",
        ssrc=ssrc,
        kind=receiver._RTCRtpReceiver__kind,
        transportId=receiver.transport._stats_id,
        packetsSent=sent,
        bytesSent=octets,
        remoteTimestamp=clock.datetime_from_ntp(ntp),
    )


def _remote_inbound(
    sender: Any,
    timestamp: datetime.datetime,
    ssrc: int,
    received: int,
    lost: int,
    jitter: int,
    rtt: Any,  # None before the first estimate, as aiortc passes it
    fraction_lost: int,
) -> RTCRemoteInboundRtpStreamStats:
    return RTCRemoteInboundRtpStreamStats(
        timestamp=timestamp,
        type="remote-inbound-rtp",
        id="remote-inbound-rtp_" + str(id(sender)),
        ssrc=ssrc,
        kind=sender.kind,
        transportId=sender.transport._stats_id,
        packetsReceived=received,
        packetsLost=lost,
        jitter=jitter,
        roundTripTime=rtt,
        fractionLost=fraction_lost,
    )
