"""A playout's clock: which 20 ms frame is due when, catching up after a stall.

:class:`~gateway.media.playout.PlayoutTrack` keeps its pacing in a
:class:`PlayoutState`: the compiled ``_rtp.PlayoutState`` when the extension is
built, so that the sender's C fast path (``_rtp.Outbound.send_due``: silence,
and speech in mid-utterance, sent with no Python per frame) and the track's
Python :meth:`~gateway.media.playout.PlayoutTrack.poll` step one and the same
clock; else :class:`PythonPlayoutState`, the same arithmetic in Python (which
the tests hold the compiled one to).

The rules: a frame is due ``_EARLY`` before its time (float rounding between
the tick's time and the frame's); one more than a frame period late counts as
late; more than ``max_burst`` periods late, the missed slots but the one due
now are skipped (the RTP timestamps jump, so the receiver conceals the gap
instead of buffering the delay for the rest of the call).
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

from gateway.media import native
from gateway.media.native import _rtp
from gateway.media.opus import FRAME_TICKS, OPUS_RATE
from gateway.media.pcm import FRAME_MS

FRAME_SECONDS: Final = FRAME_MS / 1000
# A frame counts as due this close before its time: the tick that sends it is
# due at the same instant, computed along another path (float rounding).
EARLY: Final = 0.0005
# Frames sent back to back to catch up after an event-loop stall; beyond, RTP time skips.
MAX_BURST: Final = 3


class PythonPlayoutState:
    """What ``_rtp.PlayoutState`` does, in Python (no fast path: ``arm_*`` keep nothing)."""

    def __init__(self, max_burst: int, frame_ticks: int, frame_seconds: float, early: float):
        self.max_burst = max_burst
        self._frame_ticks = frame_ticks
        self._frame_seconds = frame_seconds
        self._early = early
        self.start: float | None = None
        self.pts = self.next_pts = 0
        self.frames_sent = self.speech_frames = self.late_frames = self.skipped_frames = 0
        self.behind = False
        self.fast = ""

    def due(self, now: float) -> int | None:
        """The pts of the frame due at ``now`` (the clock steps), or None."""
        if self.start is None:
            raise RuntimeError("the playout has not started")
        late = now - (self.start + self.next_pts / OPUS_RATE)
        if late < -self._early:
            return None
        if late > self._frame_seconds:
            self.late_frames += 1
            if late > self.max_burst * self._frame_seconds:
                # Skip the missed slots but this one; the media clock stays on the loop clock.
                skip = int(late / self._frame_seconds)
                self.next_pts += skip * self._frame_ticks
                self.skipped_frames += skip
        pts = self.pts = self.next_pts
        self.next_pts = pts + self._frame_ticks
        # The next poll's test, now: a caller is spared a second call on most ticks.
        self.behind = now - (self.start + self.next_pts / OPUS_RATE) >= -self._early
        self.frames_sent += 1
        return pts

    def disarm(self) -> None:
        pass

    def arm_silence(self, payload: bytes) -> None:
        pass

    def arm_speech(
        self, encoder: Any, source: Any, item: Any, playback: Any, index: int, end: int
    ) -> None:
        pass


PlayoutState: TypeAlias = "_rtp.PlayoutState | PythonPlayoutState"


def playout_state(max_burst: int = MAX_BURST) -> PlayoutState:
    """A playout's clock on the 20 ms frame: the compiled one if built."""
    kind = PythonPlayoutState if native._rtp is None else native._rtp.PlayoutState
    return kind(max_burst, FRAME_TICKS, FRAME_SECONDS, EARLY)
