"""The RTP sender of a call's outbound audio: aiortc's, less its per-packet Python.

aiortc's :class:`~aiortc.RTCRtpSender` is general: per packet it builds an
``RTCEncodedFrame`` and an ``RtpPacket``, converts the packet's timestamp through
``Fraction`` time bases, reads the wall clock twice through ``datetime`` (for an
abs-send-time extension that audio never negotiates, and for the NTP time of the
next RTCP sender report), serializes the header extensions from scratch, and
keeps every packet for retransmissions that audio never asks for. The gateway's
outbound audio is always a :class:`~gateway.media.playout.PlayoutTrack` of
ready-made 20 ms Opus packets, so :class:`PlayoutSender` does only what changes
per packet: the sequence number and timestamp in a 12-byte header, before the
header extensions serialized once per call (the mid, when negotiated; audio
level is never sent for pre-encoded packets), then the payload.

No task per call wakes to send: the sender subscribes to the event loop's
:class:`~gateway.media.frameclock.FrameClock`, whose one timer per 20 ms tick
calls every call's :meth:`PlayoutSender._on_tick`. Silence, and speech in
mid-utterance, go in one C call with no Python per frame
(``_rtp.Outbound.send_due`` on the track's compiled clock, same pacing); for the
other frames it polls the track
(:meth:`~gateway.media.playout.PlayoutTrack.poll`, which also paces
and catches up after a stall) and hands each one to its RTP stream
(:func:`gateway.media.native.outbound`): with the compiled extension, one C call
per frame (``send`` for a ready Opus payload such as silence, ``send_pcm`` for
speech still as PCM, which it Opus-encodes first) writes the header,
SRTP-protects the packet and ``sendto``-s it on the transport's route; without
an open route (DTMF substitution in progress, a TURN relay, no extension) the
packet comes back in clear for
:meth:`~gateway.media.transport.CallTransport.send_rtp_now` (DTMF substitution,
SRTP, ``sendto``). A call whose sending fails is ended alone: its sender
unsubscribes and its RTP task returns, as aiortc's loop would.

On the wire nothing changes: same SSRC, random initial sequence number and
timestamp, marker bit on every packet (aiortc marks the last packet of each
frame, and an audio frame is one packet), same extensions, and the same RTCP
sender reports (packet and octet counts, RTP and NTP time of the last packet),
sent from the loop's one report schedule (:mod:`gateway.media.reports`) rather
than a task per sender.
Anything else (another kind of track or transport, NACK negotiated, a header
extension that changes per packet) runs aiortc's own loop.

The sender is adopted from the transceiver aiortc made (:meth:`PlayoutSender.adopt`,
before it starts sending): aiortc creates its senders itself, and the class has
no state of its own beyond what it sets when its loop starts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from aiortc.stats import RTCStatsReport
from aiortc.utils import random32

from gateway.media import native, reports, rtcp
from gateway.media.adopt import adopt
from gateway.media.frameclock import FrameClock
from gateway.media.playout import PlayoutTrack
from gateway.media.rtp import HEADER
from gateway.media.transport import CallTransport

logger = logging.getLogger(__name__)


def _report_field(mangled: str, name: str) -> Any:
    """A sender-report field of aiortc's sender, read from the stream once it plays.

    Before that (and if aiortc's own loop runs) it is the instance's own value.
    """

    def get(self: PlayoutSender) -> int:
        stream = self.__dict__.get("_stream")
        if stream is not None:
            return int(getattr(stream, name))
        return int(self.__dict__.get(mangled, 0))

    def set_(self: PlayoutSender, value: int) -> None:
        self.__dict__[mangled] = value

    return property(get, set_)


class _NoRoute:
    """A transport the compiled stream cannot send on: it hands every packet back."""

    _native_route = None


_NO_ROUTE: Final = _NoRoute()


class PlayoutSender(RTCRtpSender):
    """An :class:`~aiortc.RTCRtpSender` that sends a :class:`PlayoutTrack` lean.

    Use :meth:`adopt` on the sender of a transceiver before the connection starts
    sending (before ``setLocalDescription`` of the answer or offer).
    """

    # Set when the playout starts (the class is adopted, so there is no __init__).
    _playing: PlayoutTrack
    _ended: asyncio.Future[None]
    _stream: native.OutboundStream
    _clock: FrameClock

    # What aiortc's RTCP sender reports and getStats read: the stream's counters.
    _RTCRtpSender__ntp_timestamp = _report_field("_RTCRtpSender__ntp_timestamp", "ntp_timestamp")
    _RTCRtpSender__rtp_timestamp = _report_field("_RTCRtpSender__rtp_timestamp", "rtp_timestamp")
    _RTCRtpSender__packet_count = _report_field("_RTCRtpSender__packet_count", "packets")
    _RTCRtpSender__octet_count = _report_field("_RTCRtpSender__octet_count", "octets")

    @classmethod
    def adopt(cls, sender: RTCRtpSender) -> PlayoutSender:
        """Make aiortc's ``sender`` a PlayoutSender (the same object); returns it."""
        return adopt(sender, cls, RTCRtpSender)

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        track = self.track
        extensions = self._extension_bytes()
        if (
            not isinstance(track, PlayoutTrack)
            or not hasattr(self.transport, "send_rtp_now")  # a CallTransport (or a test's)
            or extensions is None
            or codec.payloadType is None
            or any(fb.type == "nack" for fb in codec.rtcpFeedback)
        ):
            await super()._run_rtp(codec)
            return
        await self._run_playout(track, codec.payloadType, extensions)

    # The remote-inbound stats of the peer's reports: made when getStats asks (rtcp.py).
    rtcp_stats_on_demand = True

    async def getStats(self) -> RTCStatsReport:
        rtcp.add_stats(self, self._RTCRtpSender__stats)  # type: ignore[attr-defined]
        return await super().getStats()

    async def _run_rtcp(self) -> None:
        transport = self.transport
        if not hasattr(transport, "send_rtcp_now"):  # not a CallTransport (or a test's)
            await super()._run_rtcp()
            return
        # Reports from the loop's one schedule, not a task waking per report.
        await reports.run_sender_reports(self, transport)

    def _extension_bytes(self) -> bytes | None:
        """The header extensions' bytes, the same for every packet; None if they vary."""
        extensions_map: HeaderExtensionsMap = self._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined]
        mid: str | None = self._RTCRtpSender__mid  # type: ignore[attr-defined]
        serialized = []
        for abs_send_time in (0, 0xFFFFFF):  # what aiortc would set per packet
            packet = RtpPacket()
            packet.extensions.mid = mid
            packet.extensions.abs_send_time = abs_send_time
            serialized.append(packet.serialize(extensions_map))
        if serialized[0] != serialized[1]:
            return None  # abs-send-time negotiated: aiortc's loop computes it per packet
        return serialized[0][HEADER.size :]

    async def _run_playout(self, track: PlayoutTrack, payload_type: int, extensions: bytes) -> None:
        """Send from the frame clock's tick until the track ends or the task is cancelled.

        The task only waits here: the packets go out from :meth:`_on_tick`,
        which the loop's :class:`~gateway.media.frameclock.FrameClock` calls
        every 20 ms (and once right away, so the first frame goes at once).
        """
        self._RTCRtpSender__rtp_started.set()  # type: ignore[attr-defined]
        has_extensions = 0x10 if extensions else 0
        self._playing = track
        transport = self.transport
        self._stream = native.outbound(
            transport if isinstance(transport, CallTransport) else _NO_ROUTE,
            0x80 | has_extensions,  # version 2, no padding, no CSRC
            0x80 | payload_type,  # marker: every audio frame is one packet
            self._ssrc,
            extensions,
            # Random starting points, as aiortc's (its sequence numbers start below 2**15).
            random_sequence_number(),
            random32(),
        )
        loop = asyncio.get_running_loop()
        self._ended = loop.create_future()
        # The track's clock: the loop's shared one, unless the track keeps time on
        # another (the load tester's callers, at phases of their own).
        clock = self._clock = track.clock
        clock.subscribe(self._on_tick)
        try:
            await self._ended
        except asyncio.CancelledError:
            pass
        finally:
            clock.unsubscribe(self._on_tick)
        if self.track is not None:
            self.track.stop()
            self._RTCRtpSender__track = None
        self._RTCRtpSender__rtp_exited.set()  # type: ignore[attr-defined]

    def _on_tick(self, now: float) -> None:
        """Send every frame of the track that is due at ``now`` (one, unless the loop stalled)."""
        try:
            # aiortc's `track` property, read without its Python call: this runs per frame.
            track = self._RTCRtpSender__track
            if track is not self._playing:  # replaceTrack()
                if not isinstance(track, PlayoutTrack):
                    return  # nothing to send until a PlayoutTrack comes back
                self._playing = track
            if self._enabled:
                # Silence, and speech in mid-utterance: sent by one C call, no Python per
                # frame (the track's state says which frames may; see PlayoutTrack._arm).
                stream = self._stream
                sent = stream.send_due(track._state, now)
                while sent.__class__ is bytes:  # no open route: see native.outbound
                    self._send_python(sent)
                    sent = stream.send_due(track._state, now)
                if sent is None:
                    return
            # The frames due that need the track's Python (False above).
            while (frame := track.poll(now)) is not None:
                payload, pts = frame
                if payload.__class__ is bytes:  # silence, or speech encoded before
                    if self._enabled and (packet := self._stream.send(payload, pts)) is not None:
                        self._send_python(packet)  # not sent by C: see native.outbound
                else:
                    # Speech as PCM: encoded and sent by one C call. The encoder's state
                    # goes on while disabled too, as when every frame was encoded first.
                    encoder = track._encoder
                    assert encoder is not None
                    if not self._enabled:
                        encoder.encode(payload)
                    elif (packet := self._stream.send_pcm(encoder, payload, pts)) is not None:
                        self._send_python(packet)
                if not track.behind:
                    break
        except (ConnectionError, MediaStreamError):
            self._end()  # the transport closed, or the track ended: the call is ending
        except Exception:
            # aiortc's stop() waits for the loop's exit: always reach it.
            logger.exception("RTP sender failed")
            self._end()

    def _send_python(self, packet: bytes) -> None:
        """Send an RTP packet the compiled route handed back (DTMF, TURN, no extension)."""
        transport: CallTransport = self.transport  # type: ignore[assignment]
        transport.send_rtp_now(packet)

    def _end(self) -> None:
        self._clock.unsubscribe(self._on_tick)
        if not self._ended.done():
            self._ended.set_result(None)
