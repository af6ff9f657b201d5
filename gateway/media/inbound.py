"""Inbound audio: RTP packets to 16 kHz frames on the event loop, without aiortc's decoder.

aiortc's :class:`~aiortc.RTCRtpReceiver` passes each RTP packet through a jitter
buffer that holds 4 packets back (80 ms) and, after a single lost packet, until
it overflows, leaving it 18 packets (360 ms) behind for the rest of the call;
then through a decoder thread, with two queue hops between threads per frame.
:class:`InboundAudio` takes the packets before all that. It is called where
aiortc would be: ``RTCDtlsTransport`` routes each packet (by SSRC and
negotiated payload type) to the receiver, and :meth:`InboundAudio.attach`
shadows that one receiver instance's handlers: ``_receive_rtp``, which a
:class:`~gateway.media.transport.CallTransport` calls synchronously from the
socket's callback (:meth:`InboundAudio.receive`), and ``_handle_rtp_packet``,
aiortc's own coroutine, for any other transport. The receiver's RTCP task
keeps running, and the packets still feed its reception statistics, so RTCP
receiver reports go on. aiortc's decoder thread is left idle; on a
:class:`~gateway.media.receiver.LazyDecoderReceiver` (the gateway's and the
sandbox's) it is not even started unless the packets go back to aiortc.

Its own jitter buffer (:class:`~gateway.media.jitter.JitterBuffer`) adds no delay
while packets come in order.

On a CallTransport with the compiled path (:mod:`gateway.media.native`), after
each packet this class handles it *arms* that path with where the stream
stands (SSRC, payload type, next RTP timestamp): the C code then decodes the
packets that continue the stream in order straight into frames for
``on_frame``, counting them, and hands anything else back here, where the
jitter buffer first catches up with what C played (:meth:`JitterBuffer.played`).
Arming waits while packets are held, a recording tap is set or a key press
interrupted the audio, so losses, reordering, DTMF and recording are this
module's alone.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket

from gateway.media import native
from gateway.media.dtmf import DtmfDetector
from gateway.media.jitter import JitterBuffer
from gateway.media.native import NativeStreamStatistics, _rtp
from gateway.media.opus import FRAME_TICKS, OPUS_RATE, OpusDecoder, packet_duration
from gateway.media.pcm import FRAME_MS, PCM
from gateway.media.receiver import reception_statistics
from gateway.media.rtp import InboundPacket

logger = logging.getLogger(__name__)

# The compiled path makes each frame it decodes into as ``new_frame(samples, _ONE_ZERO)``:
# ``samples * array('h', [0])``, a fresh zeroed array('h') of that length, made in C.
_NEW_FRAME: Final = operator.mul
_ONE_ZERO: Final = array("h", [0])


@dataclass(frozen=True, slots=True)
class InboundStats:
    """Counters of an :class:`InboundAudio` since it was attached."""

    packets: int
    """Opus packets received."""
    bytes: int
    """Opus payload bytes received."""
    lost: int
    """Frames that never came (concealed), not counting audio paused for DTMF."""
    late: int
    """Opus packets dropped because they came too late (or twice)."""
    concealed: int
    """Frames made up by packet-loss concealment, lost or undecodable."""
    dtmf: int
    """Key presses reported."""
    dtmf_packets: int
    decode_errors: int
    discontinuities: int


class InboundAudio:
    """Decodes a receiver's Opus and DTMF packets in the event loop, as they arrive.

    ``on_frame`` gets each 16 kHz mono frame (320 samples per 20 ms packet) as
    an ``array('h')``, from the compiled path too; the array belongs to the callee.
    ``on_dtmf`` gets (digit, duration in ms) once per key press. Other payload types are ignored.

    Attach before media flows (e.g. right after ``setRemoteDescription``):
    packets that reach aiortc's own path go to the receiver's track, which
    this class leaves unused.
    """

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        on_frame: Callable[[PCM], None],
        on_dtmf: Callable[[str, int], None] | None = None,
        opus_pt: int = 111,
        dtmf_pt: int = 126,
        *,
        window: int = 2,
        max_gap: int = 25,
    ) -> None:
        self.receiver = receiver
        self._on_frame = on_frame
        self.on_dtmf = on_dtmf
        self._opus_pt = opus_pt
        self.dtmf_pt = dtmf_pt
        self._decoder = OpusDecoder()
        self._jitter = JitterBuffer(self._on_payload, window=window, max_gap=max_gap)
        self._detector = DtmfDetector(self._on_key)
        # If packets stop while some are held, stop waiting a little after the window.
        self._release_after = (window * FRAME_MS + FRAME_MS / 2) / 1000
        self._release_timer: asyncio.TimerHandle | None = None
        self._rtcp_streams: dict[int, StreamStatistics] | None = None
        self._dtmf_since_audio = False
        self._attached = False
        self._packets = 0
        self._bytes = 0
        self._lost = 0
        self._concealed = 0
        self._dtmf = 0
        self._dtmf_packets = 0
        self._decode_errors = 0
        self._tap: list[tuple[int, int, bytes]] | None = None
        # The compiled path of a CallTransport (gateway.media.native), once it is up.
        self._native: _rtp.Inbound | None = None
        self._fast_base = (0, 0)
        self._native_ok = native.available() and _takes_native(type(self))

    @property
    def on_frame(self) -> Callable[[PCM], None]:
        """Called with each decoded frame (the compiled path calls it too)."""
        return self._on_frame

    @on_frame.setter
    def on_frame(self, on_frame: Callable[[PCM], None]) -> None:
        self._drop_native()  # configured again, with this callback, by the next packet
        self._on_frame = on_frame

    @property
    def tap(self) -> list[tuple[int, int, bytes]] | None:
        """When a list, every Opus packet is appended to it as it arrives, as
        ``(arrival_time_ms, rtp_timestamp, payload)`` (the call's recording)."""
        return self._tap

    @tap.setter
    def tap(self, tap: list[tuple[int, int, bytes]] | None) -> None:
        self._disarm()  # the compiled path does not record
        self._tap = tap

    @property
    def opus_pt(self) -> int:
        """The Opus payload type (negotiated)."""
        return self._opus_pt

    @opus_pt.setter
    def opus_pt(self, payload_type: int) -> None:
        self._disarm()
        self._opus_pt = payload_type

    def attach(self) -> None:
        """Take the receiver's RTP packets from now on."""
        if self._attached:
            return
        self._rtcp_streams = reception_statistics(self.receiver)
        self.receiver._handle_rtp_packet = self._handle_rtp_packet  # type: ignore[method-assign]
        # What CallTransport calls, synchronously, for each packet it routes here.
        self.receiver._receive_rtp = self.receive  # type: ignore[attr-defined]
        self._attached = True

    def detach(self) -> None:
        """Give the packets back to aiortc, and report a key press still in progress.

        aiortc decodes them to the receiver's track from then on (a
        LazyDecoderReceiver starts its decoder thread with the first of them).

        Nothing in the gateway detaches a call that goes on: :meth:`close`, which ends
        every call's inbound audio, starts with this. Called alone it is a test hook:
        the tests hand a live call's packets back to aiortc with it (to check
        LazyDecoderReceiver and the compiled path's counters across the hand-over)."""
        if not self._attached:
            return
        self.receiver.__dict__.pop("_handle_rtp_packet", None)
        self.receiver.__dict__.pop("_receive_rtp", None)
        self._attached = False
        self._drop_native()  # before the decoder can go
        self._cancel_release()
        self._detector.flush()

    def close(self) -> None:
        """Detach for good and free the decoder's libopus state now, rather than
        whenever the garbage collector gets to it."""
        self.detach()
        decoder = self.__dict__.pop("_decoder", None)
        if decoder is not None:
            decoder.close()
        # The callbacks are usually bound methods of the owner: drop the cycle.
        self.on_frame = _discard
        self.on_dtmf = None

    @property
    def received(self) -> int:
        """RTP packets taken so far (audio and DTMF): a cheap liveness counter."""
        return self._packets + self._fast()[0] + self._dtmf_packets

    def _fast(self) -> tuple[int, int]:
        """Opus packets and bytes the compiled path took for this stream (its counters
        run on from when it was taken: the transport's object outlives a configuration)."""
        wire = self._native
        if wire is None:
            return (0, 0)
        return (wire.fast_packets - self._fast_base[0], wire.fast_bytes - self._fast_base[1])

    def _drop_native(self) -> None:
        """Stop using the compiled path, keeping what it counted."""
        if self._native is None:
            return
        self._disarm()
        packets, octets = self._fast()
        self._packets += packets
        self._bytes += octets
        self._native.release()
        self._native = None

    @property
    def jitter_seconds(self) -> float:
        """Interarrival jitter (RFC 3550) of the audio stream, as its RTCP reports give it."""
        for stream in (self._rtcp_streams or {}).values():
            return float(stream.jitter) / OPUS_RATE
        return 0.0

    @property
    def stats(self) -> InboundStats:
        """A snapshot of the counters."""
        fast_packets, fast_bytes = self._fast()
        return InboundStats(
            packets=self._packets + fast_packets,
            bytes=self._bytes + fast_bytes,
            lost=self._lost,
            late=self._jitter.late,
            concealed=self._concealed,
            dtmf=self._dtmf,
            dtmf_packets=self._dtmf_packets,
            decode_errors=self._decode_errors,
            discontinuities=self._jitter.discontinuities,
        )

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        """Stands in for ``RTCRtpReceiver._handle_rtp_packet`` (aiortc's own transport)."""
        self.receive(packet, arrival_time_ms)

    def receive(self, packet: RtpPacket | InboundPacket, arrival_time_ms: int) -> None:
        """Take one RTP packet of the receiver's stream, decrypted, as it arrives.

        Decodes it (or holds it in the jitter buffer) and calls ``on_frame``
        before returning. ``arrival_time_ms`` counts from 1900, as aiortc's.
        """
        if not self.receiver._enabled:
            return
        wire = self._native
        if wire is None and self._native_ok and self._attached:
            wire = self._take_native()
        elif wire is not None and wire.armed:
            self._disarm()  # what the compiled path played is behind us now
        streams = self._rtcp_streams
        if streams is not None:
            stream = streams.get(packet.ssrc)
            if stream is None:
                if wire is not None and wire.tracked_ssrc is None:
                    wire.track(packet.ssrc)  # its statistics live in C from now on
                    stream = NativeStreamStatistics(wire)
                else:
                    stream = StreamStatistics(OPUS_RATE)
                streams[packet.ssrc] = stream
            stream.add(packet)  # type: ignore[arg-type]  # reads the header fields only
        try:
            if packet.payload_type == self._opus_pt:
                self._packets += 1
                self._bytes += len(packet.payload)
                if self._tap is not None:
                    self._tap.append((arrival_time_ms, packet.timestamp, packet.payload))
                self._push_audio(packet)
                if wire is not None and packet.ssrc == wire.tracked_ssrc:
                    self._arm(wire, packet.ssrc)
            elif packet.payload_type == self.dtmf_pt:
                self._dtmf_packets += 1
                self._dtmf_since_audio = True
                self._detector.feed(packet.timestamp, packet.payload)
        except Exception:
            # Raising here would end aiortc's receive loop: the whole call.
            logger.exception("inbound RTP packet handling failed: %s", packet)

    def _push_audio(self, packet: RtpPacket | InboundPacket) -> None:
        try:
            duration = packet_duration(packet.payload)
        except ValueError:
            duration = FRAME_TICKS  # undecodable: it will be concealed
        self._jitter.push(packet.timestamp, packet.payload, duration)
        if self._jitter.holding:
            if self._release_timer is None:
                loop = asyncio.get_running_loop()
                self._release_timer = loop.call_later(self._release_after, self._release)
        elif self._release_timer is not None:
            self._cancel_release()

    def _take_native(self) -> _rtp.Inbound | None:
        """The compiled inbound path of the receiver's CallTransport, set up for this
        stream; None if there is none (yet)."""
        wire: _rtp.Inbound | None = getattr(self.receiver.transport, "_native_in", None)
        if wire is None or self._decoder.closed:
            return None
        wire.configure(
            native.opus_function("opus_decode"),
            self._decoder.address,
            self._decoder,
            self.on_frame,
            _NEW_FRAME,
            _ONE_ZERO,
            self.receiver,
        )
        self._native = wire
        self._fast_base = (wire.fast_packets, wire.fast_bytes)
        return wire

    def _arm(self, wire: _rtp.Inbound, ssrc: int) -> None:
        """Let the compiled path take the next packets while they come in order.

        Only in the plain case: nothing held back, no recording, no key press
        since the last audio (its loss accounting is Python's).
        """
        position = self._jitter.position
        if (
            position is not None
            and not self._jitter.holding
            and self._tap is None
            and not self._dtmf_since_audio
            and self._attached
        ):
            wire.arm(ssrc, self._opus_pt, *position)

    def _disarm(self) -> None:
        """Stop the compiled path; catch the jitter buffer up with what it played."""
        wire = self._native
        if wire is None:
            return
        played = wire.disarm()
        if played is not None:
            self._jitter.played(*played)
            self._dtmf_since_audio = False
            self._decoder.note_decoded()  # a loss after it is concealed, not silenced

    def _release(self) -> None:
        self._release_timer = None
        try:
            self._jitter.release()
        except Exception:
            logger.exception("inbound jitter buffer release failed")

    def _cancel_release(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None

    def _on_payload(self, payload: bytes | None) -> None:
        if payload is None:
            if not self._dtmf_since_audio:
                # Senders may pause audio while a key is down; that is no loss.
                self._lost += 1
            frame = self._decoder.conceal()
            self._concealed += 1
        else:
            self._dtmf_since_audio = False
            try:
                frame = self._decoder.decode(payload)
            except ValueError:
                self._decode_errors += 1
                self._concealed += 1
                frame = self._decoder.conceal()
        self._on_frame(frame)

    def _on_key(self, digit: str, duration_ms: int) -> None:
        self._dtmf += 1
        if self.on_dtmf is not None:
            self.on_dtmf(digit, duration_ms)


def _discard(frame: PCM) -> None:
    pass


def _takes_native(cls: type[InboundAudio]) -> bool:
    """Whether ``cls`` handles audio as InboundAudio does (a subclass that overrides
    what a packet does, e.g. the load tester's counter, keeps the Python path)."""
    return all(
        getattr(cls, name) is getattr(InboundAudio, name)
        for name in ("_push_audio", "_on_payload", "receive")
    )
