"""What a bot queues on a :class:`~gateway.media.playout.PlayoutTrack`, and awaits.

A :class:`Playback` is one utterance's handle (await it, see whether it was
interrupted and where it paused); :class:`Queued` is its place in the track's
queue (its source and the next frame to send); :class:`PlayoutStats` the
track's counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.media.opus import OpusEncoder
from gateway.media.pacing import PlayoutState
from gateway.media.pcm import FRAME_SAMPLES


@dataclass(frozen=True, slots=True)
class PlayoutStats:
    """Counters of a :class:`~gateway.media.playout.PlayoutTrack` since it started."""

    frames_sent: int
    speech_frames: int
    silence_frames: int
    late_frames: int
    """Frames sent more than one frame period after they were due."""
    skipped_frames: int
    """Frame slots given up after an event-loop stall, instead of bursting to catch up."""


class Playback:
    """One queued utterance: await :meth:`wait` until it is sent or flushed."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        """Frames queued."""
        self.frames_sent = 0
        self.interrupted = False
        """True if :meth:`PlayoutTrack.flush` (or stop) dropped frames of it."""
        self.pauses: list[tuple[int, int]] = []
        """(frames sent before the pause, frames of silence it lasted), one per pause."""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait(self) -> Playback:
        """Wait until the last frame was sent or the playback was flushed."""
        await asyncio.shield(self.done)
        return self

    def _finish(self, *, interrupted: bool) -> None:
        self.interrupted = interrupted
        if not self.done.done():
            self.done.set_result(None)

    def __repr__(self) -> str:
        state = "interrupted" if self.interrupted else "done" if self.done.done() else "playing"
        return f"<Playback {self.frames_sent}/{self.frames} frames, {state}>"


class Queued:
    """A playback's source in the queue: PCM to encode on the fly, or Opus packets.

    ``next_index`` and the playback's ``frames_sent`` go up together, one per frame sent
    (by the track's Python, or by the compiled fast path, which writes both).
    """

    __slots__ = ("next_index", "packets", "pcm", "playback")

    def __init__(
        self, playback: Playback, pcm: memoryview | None, packets: Sequence[bytes]
    ) -> None:
        self.playback = playback
        self.pcm = pcm
        self.packets = packets
        self.next_index = 0

    @property
    def remaining(self) -> int:
        return self.playback.frames - self.next_index

    def arm(self, state: PlayoutState, encoder: OpusEncoder | None) -> None:
        """Let the compiled fast path send this item's frames from the next to the one
        before its last (the last may be padded, and it ends the playback: Python's)."""
        last = self.playback.frames - 1
        if self.pcm is None:
            state.arm_speech(None, self.packets, self, self.playback, self.next_index, last)
        elif encoder is not None and encoder._native_encoder is not None:
            end = min(last, len(self.pcm) // FRAME_SAMPLES)  # whole frames only
            state.arm_speech(
                encoder._native_encoder, self.pcm, self, self.playback, self.next_index, end
            )
        else:  # no encoder yet: the first frame makes it
            state.disarm()
