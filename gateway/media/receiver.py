"""aiortc's RTP receiver without an idle decoder thread, and the statistics it keeps.

aiortc's :class:`~aiortc.RTCRtpReceiver` starts a thread in ``receive()``: it
takes the frames aiortc's jitter buffer completes off a ``queue.Queue``,
decodes them and puts them on the receiver's track. The gateway decodes a
call's audio on the event loop instead (:class:`~gateway.media.inbound.InboundAudio`
takes the packets before aiortc's jitter buffer), so that thread would wait,
idle, for the whole call: a thread and its stack per call, and a join on the
event loop when the call ends.

:class:`LazyDecoderReceiver` starts it when aiortc's own path first gets a
packet (``_handle_rtp_packet``, which InboundAudio shadows while it is
attached): after :meth:`~gateway.media.inbound.InboundAudio.detach` on a call
that goes on, or on a receiver nothing took. Stopped (``stop()``, a BYE, the
transport closing) without one, it ends its track as aiortc's thread would
(``track.recv()`` raises :class:`~aiortc.mediastreams.MediaStreamError`),
with nothing to join, and starts none afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtcrtpreceiver import StreamStatistics, decoder_worker
from aiortc.rtp import RtpPacket

from gateway.media.adopt import adopt

logger = logging.getLogger(__name__)


class LazyDecoderReceiver(RTCRtpReceiver):
    """An :class:`~aiortc.RTCRtpReceiver` whose decoder thread starts with the first
    packet aiortc's own path handles, if one ever does.

    Use :meth:`adopt` before the connection starts receiving.
    """

    # aiortc's own state (name-mangled in RTCRtpReceiver) that this class reads and sets.
    _RTCRtpReceiver__codecs: dict[int | None, RTCRtpCodecParameters]  # as aiortc fills it
    _RTCRtpReceiver__decoder_error: threading.Event
    _RTCRtpReceiver__decoder_queue: queue.Queue[Any]
    _RTCRtpReceiver__decoder_thread: threading.Thread | None
    _RTCRtpReceiver__kind: str
    _RTCRtpReceiver__rtcp_task: asyncio.Future[None] | None
    _RTCRtpReceiver__rtx_ssrc: dict[int, int]
    _RTCRtpReceiver__started: bool

    # Set when the receiver stops decoding for good: no thread starts after it.
    _decoder_stopped = False

    @classmethod
    def adopt(cls, receiver: RTCRtpReceiver) -> LazyDecoderReceiver:
        """Make aiortc's ``receiver`` a LazyDecoderReceiver (the same object); returns it."""
        return adopt(receiver, cls, RTCRtpReceiver)

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        """aiortc 1.16's ``receive()`` without starting the decoder thread
        (``tests/test_media_receiver.py`` checks it leaves the receiver as aiortc's does)."""
        if self._RTCRtpReceiver__started:
            return
        codecs = self._RTCRtpReceiver__codecs
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        rtx_ssrc = self._RTCRtpReceiver__rtx_ssrc
        for encoding in parameters.encodings:
            if encoding.rtx:
                rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
        self.transport._register_rtp_receiver(self, parameters)
        self._RTCRtpReceiver__rtcp_task = asyncio.ensure_future(self._run_rtcp())
        self._RTCRtpReceiver__started = True

    @property
    def decoding(self) -> bool:
        """Whether aiortc's decoder thread is running."""
        return self._RTCRtpReceiver__decoder_thread is not None

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        if not self.decoding and not self._decoder_stopped and self._enabled:
            self._start_decoder()
        await super()._handle_rtp_packet(packet, arrival_time_ms)

    def _start_decoder(self) -> None:
        """What aiortc's ``receive()`` does to start the thread."""
        thread = threading.Thread(
            target=decoder_worker,
            name=self._RTCRtpReceiver__kind + "-decoder",
            args=(
                asyncio.get_running_loop(),
                self._RTCRtpReceiver__decoder_queue,
                self._track._queue,  # type: ignore[union-attr]
                self._RTCRtpReceiver__decoder_error,
            ),
        )
        self._RTCRtpReceiver__decoder_thread = thread
        thread.start()
        logger.debug("RTCRtpReceiver(%s): decoder thread started", self._RTCRtpReceiver__kind)

    def _RTCRtpReceiver__stop_decoder(self) -> None:
        # aiortc calls it (stop(), a BYE, the transport closing) as ``self.__stop_decoder()``.
        already = self._decoder_stopped
        self._decoder_stopped = True
        if self.decoding:
            RTCRtpReceiver._RTCRtpReceiver__stop_decoder(self)  # type: ignore[attr-defined]
        elif not already and self._track is not None:
            self._track._queue.put_nowait(None)  # the thread's last word: the track ends


def reception_statistics(receiver: RTCRtpReceiver) -> dict[int, StreamStatistics] | None:
    """The receiver's per-SSRC reception statistics, which its RTCP reports are built from.

    aiortc fills them in the ``_handle_rtp_packet`` that InboundAudio replaces;
    without them it would stop sending receiver reports. If a future aiortc
    renames it, reports stop but audio goes on.
    """
    streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
    if not isinstance(streams, dict):
        logger.warning("aiortc internals changed: no RTCP receiver reports for inbound audio")
        return None
    return streams
