"""A call's DTLS-SRTP transport, with RTP moved straight between socket and pipeline.

The path of one packet, and what this module takes out of it:

Inbound (caller to bot). aiortc's way: aioice's ``StunProtocol.datagram_received``
tries to parse every datagram as STUN, puts it on an ``asyncio.Queue``; aiortc's
``RTCDtlsTransport`` task awaits that queue (a future and a task wake-up per
packet), unprotects the SRTP, builds an ``RtpPacket`` with every header
extension decoded, and awaits the receiver's handler. Once DTLS is up,
:class:`CallTransport` shadows ``datagram_received`` on its ICE sockets: an RTP
datagram (first byte 128-191, not RTCP; RFC 7983 demultiplexing) is unprotected
and read by :func:`parse_inbound` (fixed header only; CSRCs, extensions and
padding skipped by their lengths) right there, routed by aiortc's own router,
and handed to :meth:`gateway.media.inbound.InboundAudio.receive`, which decodes
it and runs the bot's frame callbacks, all before the socket's callback returns.
STUN (consent freshness), DTLS and RTCP take aioice's and aiortc's own path.

Outbound (bot to caller): :meth:`CallTransport.send_rtp_now` is aiortc's
``_send_rtp`` without its coroutines: SRTP protect, then ``sendto`` on the socket
and remote address of the ICE pair aioice selected (a TURN relay would go
through aioice's ``send_data``), called from
:class:`~gateway.media.sender.PlayoutSender` at the frame clock's tick.

What goes on the wire is unchanged: the same SRTP sessions, the same 5-tuple.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast

import pylibsrtp
from aioice.ice import CandidatePair, StunProtocol
from aiortc import RTCDtlsTransport
from aiortc.rtcdtlstransport import State
from aiortc.rtp import RtpPacket

from gateway.media.frameclock import frame_clock

logger = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("!BBHII")
_NTP_UNIX_OFFSET: Final = 2208988800  # aiortc's arrival times count from 1900 (NTP)
_MAX_DATAGRAM: Final = 65535
# A bound on one tick's work per socket (a flood waits for the next tick, or is dropped
# by the kernel once the socket's buffer is full); a call gets ~1 packet per tick.
_MAX_READS_PER_TICK: Final = 64


class InboundPacket:
    """The parts of a received RTP packet the gateway reads (duck-types ``RtpPacket``)."""

    __slots__ = ("marker", "payload", "payload_type", "sequence_number", "ssrc", "timestamp")

    def __init__(
        self,
        payload_type: int,
        marker: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        payload: bytes,
    ) -> None:
        self.payload_type = payload_type
        self.marker = marker
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.payload = payload

    def __repr__(self) -> str:
        return (
            f"InboundPacket(seq={self.sequence_number}, ts={self.timestamp}, "
            f"marker={self.marker}, payload_type={self.payload_type}, "
            f"payload={len(self.payload)} bytes)"
        )


def parse_inbound(data: bytes) -> InboundPacket:
    """Read an RTP packet's header and payload; ValueError if it is malformed."""
    if len(data) < _HEADER.size:
        raise ValueError("RTP packet length is less than 12 bytes")
    first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise ValueError("RTP packet has invalid version")
    start = _HEADER.size + 4 * (first & 0x0F)  # CSRCs
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < start + 4:
            raise ValueError("RTP packet has truncated extension profile / length")
        start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
    end = len(data)
    if first & 0x20:  # padding: its length is the last byte
        end -= data[-1]
    if start > end or (first & 0x20 and data[-1] == 0):
        raise ValueError("RTP packet is truncated or has invalid padding")
    return InboundPacket(
        second & 0x7F, second >> 7, sequence_number, timestamp, ssrc, data[start:end]
    )


class CallTransport(RTCDtlsTransport):
    """An :class:`~aiortc.RTCDtlsTransport` that moves a call's RTP without a task hop.

    Use :meth:`adopt` on a transceiver's receiver transport once the remote
    description made it (before media flows).
    """

    rtp_rewrite: Callable[[bytes], bytes] | None = None
    """Applied to every RTP packet sent through :meth:`send_rtp_now` before SRTP
    (the DTMF sender's substitution, see :mod:`gateway.media.dtmf`)."""

    _sockets: dict[StunProtocol, socket.socket]
    """A duplicate of each of the ICE connection's UDP sockets, read at the tick."""
    _spawned: set[asyncio.Task[None]]
    # aiortc's transport statistics (getStats), kept as its own methods keep them.
    _RTCDtlsTransport__rx_bytes: int
    _RTCDtlsTransport__rx_packets: int
    _RTCDtlsTransport__tx_bytes: int
    _RTCDtlsTransport__tx_packets: int

    @classmethod
    def adopt(cls, transport: RTCDtlsTransport) -> CallTransport:
        """Make aiortc's ``transport`` a CallTransport (the same object); returns it."""
        if not isinstance(transport, cls):
            if type(transport) is not RTCDtlsTransport:
                raise TypeError(f"cannot adopt a {type(transport).__name__}")
            transport.__class__ = cls
            assert isinstance(transport, cls)
            transport._sockets = {}
            transport._spawned = set()
        assert isinstance(transport, cls)
        return transport

    # --- sending -------------------------------------------------------------------------

    def send_rtp_now(self, data: bytes) -> None:
        """Protect an RTP packet and send it on the selected ICE pair, now.

        What aiortc's ``_send_rtp`` does, without its two coroutine layers and
        aioice's two: the same SRTP session, the same socket and remote address
        the ICE pair selected. Raises ConnectionError once the transport or the
        ICE connection is closed (as ``_send_rtp`` does).
        """
        if self._state is not State.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        rewrite = self.rtp_rewrite
        if rewrite is not None:
            data = rewrite(data)
        data = self._tx_srtp.protect(data)
        pair = self._ice_pairs.get(1)  # rtcp-mux: one component
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        protocol = pair.protocol
        if type(protocol) is StunProtocol:
            self._sendto(protocol, data, pair.remote_addr)
        else:  # a TURN relay: aioice's own send (it may bind a channel first)
            self._spawn(protocol.send_data(data, pair.remote_addr))
        self._RTCDtlsTransport__tx_bytes += len(data)
        self._RTCDtlsTransport__tx_packets += 1

    def _sendto(self, protocol: StunProtocol, data: bytes, addr: tuple[str, int]) -> None:
        sock = self._sockets.get(protocol)
        if sock is not None:
            try:
                sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                pass  # the socket's buffer is full: asyncio's transport buffers it
        protocol.transport.sendto(data, addr)

    @property
    def _ice_pairs(self) -> dict[int, CandidatePair]:
        pairs: dict[int, CandidatePair] = self.transport._connection._nominated
        return pairs

    # --- receiving -----------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        super()._set_state(state)
        if state is State.CONNECTED:
            self._take_datagrams()
        elif state in (State.CLOSED, State.FAILED):
            self._release_datagrams()

    def _take_datagrams(self) -> None:
        """Read the ICE connection's sockets at the frame clock's tick, not on readiness.

        Each of aioice's UDP sockets stops waking the event loop
        (``pause_reading``); :meth:`_read_sockets` drains them once per 20 ms
        tick through a duplicate of the socket's descriptor. RTP (first byte
        128-191 and not RTCP, RFC 7983) goes to :meth:`_datagram_received`;
        STUN, DTLS and RTCP to aioice's protocol as before (its queue, aiortc's
        task). One wake-up per tick for every call's packets, instead of one
        per packet.
        """
        for protocol in self.transport._connection._protocols:
            transport = protocol.transport
            if type(protocol) is not StunProtocol or transport.is_closing():
                continue
            fd = os.dup(transport.get_extra_info("socket").fileno())
            self._sockets[protocol] = socket.socket(fileno=fd)
            cast(asyncio.ReadTransport, transport).pause_reading()
        if self._sockets:
            frame_clock(asyncio.get_running_loop()).subscribe(self._read_sockets)

    def _release_datagrams(self) -> None:
        if not self._sockets:
            return
        frame_clock(asyncio.get_running_loop()).unsubscribe(self._read_sockets)
        for protocol, sock in self._sockets.items():
            sock.close()  # the duplicate; aioice's own socket stays open
            if not protocol.transport.is_closing():
                cast(asyncio.ReadTransport, protocol.transport).resume_reading()
        self._sockets.clear()

    def _read_sockets(self, now: float) -> None:
        """Everything that arrived since the last tick, in order, socket by socket."""
        for protocol, sock in self._sockets.items():
            for _ in range(_MAX_READS_PER_TICK):
                try:
                    data, addr = sock.recvfrom(_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    protocol.error_received(exc)  # what asyncio does (aioice logs it)
                    break
                if len(data) > 1 and 127 < data[0] < 192 and not 191 < data[1] < 209:
                    try:
                        self._datagram_received(data)
                    except Exception:
                        logger.exception("inbound RTP handling failed")
                else:
                    protocol.datagram_received(data, addr)

    def _datagram_received(self, data: bytes) -> None:
        """One SRTP packet, straight from the socket: unprotect, parse, hand to its receiver."""
        self._RTCDtlsTransport__rx_bytes += len(data)
        self._RTCDtlsTransport__rx_packets += 1
        try:
            data = self._rx_srtp.unprotect(data)
        except pylibsrtp.Error as exc:
            logger.debug("x SRTP unprotect failed: %s", exc)
            return
        arrival_time_ms = int((time.time() + _NTP_UNIX_OFFSET) * 1000)
        try:
            packet = parse_inbound(data)
        except ValueError as exc:
            logger.debug("x RTP parsing failed: %s", exc)
            return
        receiver = self._rtp_router.route_rtp(packet)  # type: ignore[arg-type]
        if receiver is None:
            return
        receive = receiver.__dict__.get("_receive_rtp")
        if receive is not None:  # an InboundAudio's: the packet is handled now
            receive(packet, arrival_time_ms)
        else:
            self._spawn(self._to_aiortc(receiver, data, arrival_time_ms))

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        # aiortc's task path: packets that came before the fast path was on.
        try:
            packet = parse_inbound(data)
        except ValueError as exc:
            logger.debug("x RTP parsing failed: %s", exc)
            return
        receiver = self._rtp_router.route_rtp(packet)  # type: ignore[arg-type]
        if receiver is None:
            return
        receive = receiver.__dict__.get("_receive_rtp")
        if receive is not None:
            receive(packet, arrival_time_ms)
        else:
            await self._to_aiortc(receiver, data, arrival_time_ms)

    async def _to_aiortc(self, receiver: Any, data: bytes, arrival_time_ms: int) -> None:
        """A packet for a receiver InboundAudio does not take: aiortc's parse, its handler."""
        try:
            full = RtpPacket.parse(data, self._rtp_header_extensions_map)
        except ValueError as exc:
            logger.debug("x RTP parsing failed: %s", exc)
            return
        await receiver._handle_rtp_packet(full, arrival_time_ms=arrival_time_ms)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def stop(self) -> None:
        self._release_datagrams()
        for task in list(self._spawned):
            task.cancel()
        await super().stop()
