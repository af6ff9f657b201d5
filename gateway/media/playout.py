"""Outbound audio: the track that aiortc sends to the caller.

:class:`PlayoutTrack` hands aiortc one Opus packet every 20 ms, as an
``av.Packet``. aiortc's :class:`~aiortc.RTCRtpSender` then takes its ``pack()``
path: no encoder of its own, no executor hop. The track always has something to
send: queued speech if there is any, else a cached silence packet, because
WhatsApp drops a call that goes 20 s without media.

Speech is queued as 16 kHz PCM (:meth:`PlayoutTrack.play`, encoded one frame
per ``recv()`` so a long utterance never means a long encode on the event loop)
or as Opus packets encoded earlier (:meth:`PlayoutTrack.play_packets`).

The track's clock is a :mod:`~gateway.media.pacing` state, compiled when the
extension is built: the gateway's sender sends the frames that need no Python
(silence; an utterance's frames but its first and last, when nothing watches
them) straight from it in C, and polls the track (:meth:`PlayoutTrack.poll`)
for the others; :meth:`PlayoutTrack._arm` keeps the state told which are which.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from gateway.media.frameclock import FrameClock, frame_clock
from gateway.media.opus import (
    DEFAULT_COMPLEXITY,
    OPUS_RATE,
    OpusEncoder,
    checked_complexity,
    frames_for,
    silence_packet,
)
from gateway.media.pacing import MAX_BURST, playout_state
from gateway.media.pcm import FRAME_SAMPLES, AudioBuffer, as_samples, silence
from gateway.media.playback import Playback, PlayoutStats, Queued

logger = logging.getLogger(__name__)

TIME_BASE: Final = fractions.Fraction(1, OPUS_RATE)
_ZEROS: Final = memoryview(silence(FRAME_SAMPLES))

__all__ = ["MAX_BURST", "Playback", "PlayoutStats", "PlayoutTrack"]


class PlayoutTrack(MediaStreamTrack):
    """An audio track that sends queued speech, or silence, every 20 ms.

    ``max_burst`` bounds catching up after the event loop stalled: up to that
    many frames go out back to back; beyond it the clock jumps forward instead
    (the RTP timestamps skip, so the receiver conceals the gap rather than
    buffering the delay for the rest of the call).

    ``on_frame_sent(pts, is_speech)`` is called as each frame leaves, pts in
    48 kHz units. ``complexity`` is the Opus encoder's (0-10, see
    :data:`~gateway.media.opus.DEFAULT_COMPLEXITY`). ``clock`` is the frame clock
    whose grid the track keeps time on (default: the loop's shared
    :func:`~gateway.media.frameclock.frame_clock`, as every call of the gateway does).
    """

    kind = "audio"

    def __init__(
        self,
        *,
        bitrate: int = 20000,
        complexity: int = DEFAULT_COMPLEXITY,
        max_burst: int = MAX_BURST,
        on_frame_sent: Callable[[int, bool], None] | None = None,
        clock: FrameClock | None = None,
    ) -> None:
        super().__init__()
        self._bitrate = bitrate
        # Checked now, not at the first utterance, when an encoder is made.
        self._complexity = checked_complexity(complexity)
        self._encoder: OpusEncoder | None = None
        self._silence = silence_packet()
        self._pad = memoryview(silence(FRAME_SAMPLES))
        self._queue: deque[Queued] = deque()
        # readyState is a property of aiortc's track: read per frame, a plain flag is cheaper.
        self._ended = False
        self._paused = False
        self._clock = clock
        # The pacing (and counters), shared with the sender's compiled fast path, which
        # sends the frames _arm says need no Python (see gateway.media.pacing).
        self._state = playout_state(max_burst)
        self._on_frame_sent = on_frame_sent
        self._tap: list[tuple[int, bytes]] | None = None
        self._arm()

    @property
    def on_frame_sent(self) -> Callable[[int, bool], None] | None:
        """Called ``(pts, is_speech)`` as each frame leaves (pts in 48 kHz units), if set."""
        return self._on_frame_sent

    @on_frame_sent.setter
    def on_frame_sent(self, callback: Callable[[int, bool], None] | None) -> None:
        self._on_frame_sent = callback
        self._arm()

    @property
    def tap(self) -> list[tuple[int, bytes]] | None:
        """When a list, every speech packet sent is appended to it as ``(pts, payload)``,
        pts in 48 kHz units from :attr:`started_at` (the call's recording)."""
        return self._tap

    @tap.setter
    def tap(self, tap: list[tuple[int, bytes]] | None) -> None:
        self._tap = tap
        self._arm()

    @property
    def behind(self) -> bool:
        """Whether, after the last frame :meth:`poll` returned, another is due already."""
        return bool(self._state.behind)

    @property
    def _start(self) -> float | None:
        return self._state.start

    @_start.setter
    def _start(self, start: float | None) -> None:  # tests start a track at a given tick
        self._state.start = start

    @property
    def clock(self) -> FrameClock:
        """The frame clock the track sends on (the running loop's shared one unless given)."""
        if self._clock is None:
            self._clock = frame_clock(asyncio.get_running_loop())
        return self._clock

    @property
    def started_at(self) -> float | None:
        """Event-loop time of pts 0 (the first frame), once sending began."""
        return self._state.start

    # --- what the bot calls --------------------------------------------------------

    def play(self, pcm: AudioBuffer) -> Playback:
        """Queue 16 kHz mono int16 speech; it is encoded a frame at a time as it is sent.

        ``pcm`` is any buffer of int16 samples (see :func:`~gateway.media.pcm.as_samples`).
        It is not copied: do not modify it until the playback is done.
        """
        samples = as_samples(pcm)
        return self._enqueue(samples, (), frames_for(len(samples)) if len(samples) else 0)

    def play_packets(self, packets: Sequence[bytes]) -> Playback:
        """Queue speech already encoded as 20 ms Opus packets (e.g. a cached prompt)."""
        return self._enqueue(None, packets, len(packets))

    def pause(self) -> None:
        """Send silence from the next frame on, keeping the queue (a possible barge-in).

        Does nothing when nothing is queued. :meth:`resume` goes on where it
        paused; :meth:`flush` drops the queue and ends the pause.
        """
        if self._paused or not self._queue:
            return
        self._paused = True
        self._queue[0].playback.pauses.append((self._queue[0].playback.frames_sent, 0))
        self._arm()

    def resume(self) -> None:
        """Go on with the queued speech where :meth:`pause` stopped it."""
        if not self._paused:
            return
        self._paused = False
        if self._queue and self._queue[0].pcm is not None and self._queue[0].next_index:
            # The encoder's state ends in the speech before the pause; the silence
            # packets sent since are not in it. A fresh one starts clean.
            self._encoder = None
        self._arm()

    @property
    def paused(self) -> bool:
        """Whether queued speech is held back by :meth:`pause`."""
        return self._paused

    def flush(self) -> int:
        """Drop all queued speech from the next frame on (barge-in); returns frames dropped.

        Also ends a pause: what is queued after this plays at once.
        """
        self._paused = False
        dropped = 0
        while self._queue:
            item = self._queue.popleft()
            dropped += item.remaining
            if item.pcm is not None and item.next_index:
                # The encoder holds the interrupted speech in its lookahead and
                # state; a fresh one keeps it out of the next utterance.
                self._encoder = None
            item.playback._finish(interrupted=True)
        self._arm()
        return dropped

    @property
    def bitrate(self) -> int:
        """Target Opus bitrate in bit/s for speech encoded from now on."""
        return self._bitrate

    @bitrate.setter
    def bitrate(self, value: int) -> None:
        # Applies from the next encoder; one is made per utterance after a flush anyway.
        if value != self._bitrate:
            self._bitrate = value
            if not self._queue:
                self._encoder = None

    @property
    def is_playing(self) -> bool:
        """Whether speech is queued or being sent."""
        return bool(self._queue)

    @property
    def stats(self) -> PlayoutStats:
        """A snapshot of the counters."""
        state = self._state
        return PlayoutStats(
            frames_sent=state.frames_sent,
            speech_frames=state.speech_frames,
            silence_frames=state.frames_sent - state.speech_frames,
            late_frames=state.late_frames,
            skipped_frames=state.skipped_frames,
        )

    def stop(self) -> None:
        """End the track: queued playbacks finish as interrupted, the encoder is freed."""
        self.flush()
        self._ended = True
        # Free libopus now, not at the next GC.
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None
        self._arm()
        super().stop()

    # --- what aiortc calls ---------------------------------------------------------

    async def recv(self) -> av.Packet:
        """The next 20 ms Opus packet, returned when it is due (aiortc's generic path)."""
        payload, pts = await self.next_payload()
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet

    async def next_payload(self) -> tuple[bytes, int]:
        """The next 20 ms Opus payload and its pts (48 kHz ticks), returned when due.

        aiortc's generic path (:meth:`recv`); the gateway's own sender calls
        :meth:`poll` from the frame clock's tick instead.
        """
        loop = asyncio.get_running_loop()
        while True:
            frame = self.poll(loop.time())
            if frame is not None:
                payload, pts = frame
                return payload if isinstance(payload, bytes) else self.encode(payload), pts
            await self.clock.sleep_until(self.next_due)

    @property
    def next_due(self) -> float:
        """Loop time the next frame is due (the track's start must be known)."""
        start = self._state.start
        assert start is not None
        return start + self._state.next_pts / OPUS_RATE

    def poll(self, now: float) -> tuple[bytes | memoryview, int] | None:
        """The next 20 ms frame and its pts (48 kHz ticks) if it is due at ``now``.

        The frame is an Opus payload (``bytes``), or, for speech queued as PCM,
        its 20 ms PCM frame, which the caller encodes with the track's encoder
        (:meth:`encode`) before anything else touches the track (the frame may be
        a buffer the track reuses): :class:`~gateway.media.sender.PlayoutSender`
        encodes and sends it in one C call. ``now`` is the event loop's time.
        None while the next frame is not due; call again at the next tick of
        :func:`~gateway.media.frameclock.frame_clock` (tracks keep time on its
        grid). A caller that is late gets the frames it missed one per call, up
        to ``max_burst`` of them; beyond that the missed slots are skipped; after
        a frame, :attr:`behind` says whether the next is due at ``now`` too.
        Raises MediaStreamError once the track has ended.
        """
        if self._ended:
            raise MediaStreamError
        state = self._state
        if state.start is None:
            # On the loop's shared 20 ms grid (unless given another clock): one timer
            # wakes every call's track. The first frame counts as due on the latest
            # grid line: it goes now. That line is the one at or before ``now``, not
            # before the loop's time: a caller that read ``now`` before another line
            # passed (a tick's later callbacks) still gets its frame.
            state.start = self.clock.last_tick(now)
        # Late and skipped frames counted, behind said (gateway.media.pacing).
        pts = state.due(now)
        if pts is None:
            return None

        # Chosen only now, so a flush() since the last frame takes effect at this one.
        payload = self._next_speech() if self._queue else None
        if payload is None:
            payload = self._silence
            is_speech = False
        else:
            is_speech = True
            state.speech_frames += 1
            if self._tap is not None or self._on_frame_sent is not None:
                # Encoded before their code runs, which may flush or stop the track
                # (and with it the encoder).
                if not isinstance(payload, bytes):
                    payload = self.encode(payload)
                if self._tap is not None:
                    self._tap.append((pts, payload))
        if self._on_frame_sent is not None:
            try:
                self._on_frame_sent(pts, is_speech)
            except Exception:
                # An exception here would end the RTP loop, and the call's audio.
                logger.exception("on_frame_sent callback failed")
        self._arm()
        return payload, pts

    def encode(self, frame: memoryview) -> bytes:
        """Encode a PCM frame that :meth:`poll` returned."""
        assert self._encoder is not None
        return self._encoder.encode(frame)

    def _next_speech(self) -> bytes | memoryview | None:
        if not self._queue:
            return None
        if self._paused:
            playback = self._queue[0].playback
            sent, length = playback.pauses[-1]
            playback.pauses[-1] = (sent, length + 1)
            return None
        item = self._queue[0]
        index = item.next_index
        item.next_index += 1
        payload: bytes | memoryview
        if item.pcm is None:
            payload = item.packets[index]
        else:
            payload = self._frame(item.pcm, index)
        item.playback.frames_sent += 1
        if item.remaining == 0:
            # Awaiters of the playback run once this packet is on its way.
            self._queue.popleft()
            item.playback._finish(interrupted=False)
        return payload

    def _frame(self, pcm: memoryview, index: int) -> memoryview:
        """The ``index``-th 20 ms frame of ``pcm``, for the encoder (made if needed)."""
        if self._encoder is None:
            self._encoder = OpusEncoder(self._bitrate, complexity=self._complexity)
        start = index * FRAME_SAMPLES
        end = start + FRAME_SAMPLES
        if end <= len(pcm):
            return pcm[start:end]
        # The last frames: the tail padded with zeros, which also flushes the
        # encoder's lookahead so this utterance ends inside its own packets.
        pad = self._pad
        tail = max(0, len(pcm) - start)
        pad[:tail] = pcm[start:]
        pad[tail:] = _ZEROS[tail:]
        return pad

    def _enqueue(self, pcm: memoryview | None, packets: Sequence[bytes], frames: int) -> Playback:
        playback = Playback(frames)
        if self.readyState != "live" or frames == 0:
            playback._finish(interrupted=frames > 0)
            return playback
        self._queue.append(Queued(playback, pcm, packets))
        self._arm()
        return playback

    def _arm(self) -> None:
        """Tell the compiled state which next frames need no Python (none, silence, or
        the head utterance's up to its last); called whenever any of that may change."""
        state = self._state
        if self._ended or self._on_frame_sent is not None:
            state.disarm()
        elif not self._queue:
            state.arm_silence(self._silence)
        elif self._paused or self._tap is not None:
            state.disarm()
        else:
            self._queue[0].arm(state, self._encoder)
