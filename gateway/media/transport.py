"""A call's DTLS-SRTP transport, with RTP moved straight between socket and pipeline.

The path of one packet, and what this module takes out of it:

Inbound (caller to bot). aiortc's way: aioice's ``StunProtocol.datagram_received``
tries to parse every datagram as STUN, puts it on an ``asyncio.Queue``; aiortc's
``RTCDtlsTransport`` task awaits that queue (a future and a task wake-up per
packet), unprotects the SRTP, builds an ``RtpPacket`` with every header
extension decoded, and awaits the receiver's handler. Once DTLS is up,
:class:`CallTransport` shadows ``datagram_received`` on its ICE sockets: an RTP
datagram (first byte 128-191, not RTCP; RFC 7983 demultiplexing) is unprotected
(:mod:`gateway.media.srtp`) and read by :func:`~gateway.media.rtp.parse_inbound` (fixed header
only; CSRCs, extensions and padding skipped by their lengths) right there,
routed by aiortc's own router, and handed to
:meth:`gateway.media.inbound.InboundAudio.receive`, which decodes it and runs
the bot's frame callbacks, all before the socket's callback returns.
STUN (consent freshness) and DTLS take aioice's and aiortc's own path; RTCP
(second byte 192-208, as aiortc tells them apart) is unprotected right there
too and read by :func:`gateway.media.rtcp.apply` (which leaves feedback and
anything malformed to aiortc's handler, in a task).

Outbound (bot to caller): :meth:`CallTransport.send_rtp_now` is aiortc's
``_send_rtp`` without its coroutines: SRTP protect, then ``sendto`` on the socket
and remote address of the ICE pair aioice selected (a TURN relay would go
through aioice's ``send_data``), called from
:class:`~gateway.media.sender.PlayoutSender` at the frame clock's tick;
:meth:`CallTransport.send_rtcp_now` does the same with SRTCP for the RTCP
reports (:mod:`gateway.media.reports`).

With the compiled extension (:mod:`gateway.media.native`), both directions'
common case is one C call: each ICE socket's ``datagram_received`` is a
``_rtp.Port``, which unprotects, parses, counts and (for the next in-order Opus
packet of the call's stream) decodes and hands the frame on itself, and passes
anything else, decrypted, to :meth:`CallTransport._deliver` as above; the
sender's packets go out through ``_native_route`` (``_rtp.Route``: protect and
``sendto`` on the selected pair's socket), which is None while a DTMF rewrite
is set or on a TURN relay, so they take :meth:`CallTransport.send_rtp_now`.

When the sockets are read: in ``tick`` mode (the default, ``GATEWAY_MEDIA_READ``;
:mod:`gateway.media.tickread`), a call's compiled path on a direct UDP pair is not
read by asyncio at each datagram's arrival (one event-loop wake-up per datagram, at
every caller's own phase) but at the frame clock's 20 ms tick, before the senders
run: ``_rtp.Reader`` drains each socket with ``recvmmsg`` and hands every datagram
to its ``_rtp.Port`` as asyncio would, with the kernel's arrival time. asyncio's
reading is paused meanwhile and resumed when the transport closes. In ``arrival``
mode, on a TURN relay, on the Python path and before DTLS is up, asyncio reads.

What goes on the wire is unchanged: the same SRTP sessions, the same 5-tuple.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pylibsrtp
from aioice.ice import CandidatePair, StunProtocol
from aiortc import RTCDtlsTransport
from aiortc.rtcdtlstransport import State
from aiortc.rtp import RtpPacket

from gateway.media import native, rtcp, tickread
from gateway.media.adopt import adopt
from gateway.media.native import _rtp
from gateway.media.rtp import NTP_UNIX_OFFSET, InboundPacket, parse_inbound
from gateway.media.srtp import SrtpCalls, srtp_calls

__all__ = ["CallTransport", "InboundPacket", "parse_inbound"]

logger = logging.getLogger(__name__)


def _counter(mangled: str, source: str, name: str) -> Any:
    """One of aiortc's transport counters: its own part (``+=`` as before) plus the
    compiled path's, read from the object in attribute ``source``."""

    def get(self: CallTransport) -> int:
        extra = self.__dict__.get(source)
        own: int = self.__dict__.get(mangled, 0)
        return own + (getattr(extra, name) if extra is not None else 0)

    def set_(self: CallTransport, value: int) -> None:
        extra = self.__dict__.get(source)
        self.__dict__[mangled] = value - (getattr(extra, name) if extra is not None else 0)

    return property(get, set_)


def _log_inbound_error(exc: BaseException) -> None:
    logger.error("inbound RTP handling failed", exc_info=exc)


class CallTransport(RTCDtlsTransport):
    """An :class:`~aiortc.RTCDtlsTransport` that moves a call's RTP without a task hop.

    Use :meth:`adopt` on a transceiver's receiver transport once the remote
    description made it (before media flows).
    """

    # Set when DTLS is connected: the SRTP sessions' lean callers, aioice's selected pairs.
    _tx: SrtpCalls | pylibsrtp.Session
    _rx: SrtpCalls | pylibsrtp.Session
    _nominated: dict[int, CandidatePair]
    _fast_protocols: list[StunProtocol]
    _spawned: set[asyncio.Task[None]]
    _rewrite: Callable[[bytes], bytes] | None
    # The compiled path (gateway.media.native), when built and DTLS is connected.
    _native_in: _rtp.Inbound | None
    _route: _rtp.Route | None
    _native_route: _rtp.Route | None
    """What a PlayoutSender's compiled stream sends through: None while it may not."""
    _tick_read: tickread.TickReader | None
    """Reads the ICE sockets at the frame clock's tick (``tick`` mode, compiled path, direct
    UDP pair), None while asyncio reads them at each arrival."""

    # aiortc's transport statistics (getStats): its own count plus the compiled path's.
    _RTCDtlsTransport__rx_bytes = _counter("_RTCDtlsTransport__rx_bytes", "_native_in", "rx_bytes")
    _RTCDtlsTransport__rx_packets = _counter(
        "_RTCDtlsTransport__rx_packets", "_native_in", "rx_packets"
    )
    _RTCDtlsTransport__tx_bytes = _counter("_RTCDtlsTransport__tx_bytes", "_route", "tx_bytes")
    _RTCDtlsTransport__tx_packets = _counter(
        "_RTCDtlsTransport__tx_packets", "_route", "tx_packets"
    )

    @property
    def rtp_rewrite(self) -> Callable[[bytes], bytes] | None:
        """Applied to every RTP packet sent through :meth:`send_rtp_now` before SRTP
        (the DTMF sender's substitution, see :mod:`gateway.media.dtmf`); while it is
        set, the sender's packets take the Python path."""
        return self._rewrite

    @rtp_rewrite.setter
    def rtp_rewrite(self, rewrite: Callable[[bytes], bytes] | None) -> None:
        self._rewrite = rewrite
        self._native_route = self._route if rewrite is None else None

    @classmethod
    def adopt(cls, transport: RTCDtlsTransport) -> CallTransport:
        """Make aiortc's ``transport`` a CallTransport (the same object); returns it."""
        if isinstance(transport, cls):
            return transport
        adopted = adopt(transport, cls, RTCDtlsTransport)
        adopted._fast_protocols = []
        adopted._spawned = set()
        adopted._rewrite = None
        adopted._native_in = adopted._route = adopted._native_route = None
        adopted._tick_read = None
        return adopted

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
        rewrite = self._rewrite
        if rewrite is not None:
            data = rewrite(data)
        self._send_now(self._tx.protect(data))

    def send_rtcp_now(self, data: bytes) -> None:
        """Protect an RTCP compound (SRTCP) and send it as :meth:`send_rtp_now` does."""
        if self._state is not State.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        route = self._route
        if route is not None and route.open:  # protect and sendto in one C call
            route.send_rtcp(data)
        else:
            self._send_now(self._tx.protect_rtcp(data))

    def _send_now(self, data: bytes) -> None:
        pair = self._nominated.get(1)  # rtcp-mux: one component
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        protocol = pair.protocol
        if type(protocol) is StunProtocol:
            protocol.transport.sendto(data, pair.remote_addr)
        else:  # a TURN relay: aioice's own send (it may bind a channel first)
            self._spawn(protocol.send_data(data, pair.remote_addr))
        self._RTCDtlsTransport__tx_bytes += len(data)
        self._RTCDtlsTransport__tx_packets += 1

    # --- receiving -----------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        super()._set_state(state)
        if state is State.CONNECTED:
            # The SRTP sessions are set up and the ICE pair is selected by now.
            self._tx = srtp_calls(self._tx_srtp)
            self._rx = srtp_calls(self._rx_srtp)
            self._nominated = self.transport._connection._nominated
            if native.available():
                self._start_native()
            self._take_datagrams()
        elif state in (State.CLOSED, State.FAILED):
            self._release_datagrams()
            self._stop_native()

    # --- the compiled path -------------------------------------------------------------------

    def _start_native(self) -> None:
        """Set up the compiled inbound path and, on a direct UDP pair, the outbound route
        (each stays None where it cannot be: the Python path then)."""
        self._native_in = native.inbound(
            self._rx_srtp, self._from_unprotected, _log_inbound_error, self._rtcp_decrypted
        )
        pair = self._nominated.get(1)  # rtcp-mux: one component
        if pair is None or type(pair.protocol) is not StunProtocol:
            return  # a TURN relay (or none): aioice sends
        sock = pair.protocol.transport.get_extra_info("socket")
        self._route = native.route(
            self._tx_srtp,
            getattr(sock, "_sock", sock),  # asyncio's TransportSocket wraps it
            pair.remote_addr,
            self._send_protected,
        )
        if self._route is not None:
            self.rtp_rewrite = self._rewrite

    def _stop_native(self) -> None:
        self._native_route = None
        if self._route is not None:
            self._route.close()  # kept for its counters
        if self._native_in is not None:
            self._native_in.release()

    def _send_protected(self, data: bytes) -> None:
        """An SRTP packet the compiled route could not send: asyncio's sendto buffers it."""
        pair = self._nominated.get(1)
        if pair is None:
            return
        transport = pair.protocol.transport
        if transport is None:
            return  # the ICE connection closed
        transport.sendto(data, pair.remote_addr)
        buffered = transport.get_write_buffer_size()  # type: ignore[attr-defined]
        if self._route is not None and not buffered:
            self._route.backlog = False  # asyncio's buffer is empty: sendto straight again

    def _from_unprotected(self, data: bytes, arrival_time_ms: int) -> None:
        """A decrypted RTP packet, from the Python path or one the compiled path
        does not take itself: handed on now, or in a task for aiortc's receivers."""
        later = self._deliver(data, arrival_time_ms)
        if later is not None:
            self._spawn(later)

    def _take_datagrams(self) -> None:
        """Have the ICE connection's sockets hand SRTP packets to :meth:`_datagram_received`.

        Each of aioice's UDP protocols gets an instance attribute shadowing its
        ``datagram_received`` (asyncio calls it through the attribute): RTP
        (first byte 128-191 and not RTCP, RFC 7983) and RTCP come here; STUN and
        DTLS go on to aioice as before, through its queue to aiortc's task.
        With the compiled path on a direct UDP pair, in ``tick`` mode
        (:mod:`gateway.media.tickread`), those sockets are then read at the frame
        clock's tick rather than by asyncio at each arrival.
        """
        ports: list[tuple[StunProtocol, _rtp.Port]] = []
        for protocol in self.transport._connection._protocols:
            if type(protocol) is StunProtocol and "datagram_received" not in protocol.__dict__:
                received: Any = self._fast_path(protocol)
                if self._native_in is not None:
                    received = _rtp.Port(self._native_in, received)
                    ports.append((protocol, received))
                protocol.datagram_received = received  # type: ignore[method-assign]
                self._fast_protocols.append(protocol)
        pair = self._nominated.get(1)
        if (
            ports
            and tickread.read_mode() == "tick"
            and pair is not None
            and type(pair.protocol) is StunProtocol
        ):
            reader = self._tick_read = tickread.tick_reader(asyncio.get_running_loop())
            for protocol, port in ports:
                reader.register(protocol, port)

    def _release_datagrams(self) -> None:
        reader, self._tick_read = self._tick_read, None
        for protocol in self._fast_protocols:
            if reader is not None:
                reader.unregister(protocol)
            protocol.__dict__.pop("datagram_received", None)
        self._fast_protocols.clear()

    def _fast_path(self, protocol: StunProtocol) -> Callable[[bytes, Any], None]:
        """RTP and RTCP (RFC 7983, RFC 5761; a _rtp.Port takes RTP itself) read here,
        STUN and DTLS to aioice."""
        aioice_received = protocol.datagram_received
        receive, receive_rtcp = self._datagram_received, self._rtcp_received

        def datagram_received(data: bytes, addr: Any) -> None:
            if len(data) > 1 and 127 < data[0] < 192:
                try:
                    (receive_rtcp if 191 < data[1] < 209 else receive)(data)
                except Exception:
                    logger.exception("inbound RTP/RTCP handling failed")
            else:
                aioice_received(data, addr)

        return datagram_received

    def _rtcp_received(self, data: bytes) -> None:
        """One SRTCP packet, straight from the socket: what aiortc's task did with it."""
        self._RTCDtlsTransport__rx_bytes += len(data)
        self._RTCDtlsTransport__rx_packets += 1
        try:
            data = self._rx.unprotect_rtcp(data)
        except (pylibsrtp.Error, ValueError) as exc:
            logger.debug("x SRTP unprotect failed: %s", exc)
            return
        self._rtcp_decrypted(data)

    def _rtcp_decrypted(self, data: bytes) -> None:
        """A decrypted RTCP compound (from here or the compiled path): its effects, now."""
        if not rtcp.apply(self._rtp_router, data):  # feedback, malformed: aiortc's own
            self._spawn(self._handle_rtcp_data(data))

    def _datagram_received(self, data: bytes) -> None:
        """One SRTP packet, straight from the socket: unprotect, parse, hand to its receiver."""
        self._RTCDtlsTransport__rx_bytes += len(data)
        self._RTCDtlsTransport__rx_packets += 1
        try:
            data = self._rx.unprotect(data)
        except pylibsrtp.Error as exc:
            logger.debug("x SRTP unprotect failed: %s", exc)
            return
        self._from_unprotected(data, int((time.time() + NTP_UNIX_OFFSET) * 1000))

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        # aiortc's task path: packets that came before the fast path was on.
        later = self._deliver(data, arrival_time_ms)
        if later is not None:
            await later

    def _deliver(self, data: bytes, arrival_time_ms: int) -> Coroutine[Any, Any, None] | None:
        """Parse and route a decrypted RTP packet; an InboundAudio's is handled now.

        For any other receiver, the coroutine that hands it aiortc's full packet.
        """
        try:
            packet = parse_inbound(data)
        except ValueError as exc:
            logger.debug("x RTP parsing failed: %s", exc)
            return None
        receiver = self._rtp_router.route_rtp(packet)  # type: ignore[arg-type]
        if receiver is None:
            return None
        receive = receiver.__dict__.get("_receive_rtp")
        if receive is not None:
            receive(packet, arrival_time_ms)
            return None
        return self._to_aiortc(receiver, data, arrival_time_ms)

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
