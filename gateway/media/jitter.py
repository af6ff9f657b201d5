"""The jitter buffer of inbound audio: packets back in RTP timestamp order, with no delay
while they come in order (see :class:`JitterBuffer`; :mod:`gateway.media.inbound` feeds it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from gateway.media.opus import FRAME_TICKS

_HALF_RANGE: Final = 1 << 31


def _timestamp_delta(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps, across wrap-around."""
    return ((a - b + _HALF_RANGE) & 0xFFFFFFFF) - _HALF_RANGE


class JitterBuffer:
    """Puts audio packets back in RTP timestamp order, with no delay when they are in order.

    Sequence numbers cannot be used: DTMF packets share the audio stream's
    sequence space, so a gap in audio sequence numbers is not a loss. Each
    packet is handed to ``output`` as soon as every packet before it in time
    was. A missing packet is waited for while at most ``window`` frames of
    later audio are held back for it (or until :meth:`release`), then given
    up: ``output(None)`` stands for it, and everything held goes out at once,
    so a loss adds no lasting delay. Packets older than what was handed on are
    dropped as late.
    A jump of more than ``max_gap`` frames is a discontinuity, not a loss: the
    buffer restarts at the new timestamp without filling the gap.
    """

    def __init__(
        self,
        output: Callable[[bytes | None], None],
        *,
        window: int = 2,
        max_gap: int = 25,
        frame_ticks: int = FRAME_TICKS,
    ) -> None:
        if window < 0 or max_gap <= window:
            raise ValueError("need 0 <= window < max_gap")
        self._output = output
        self._window = window * frame_ticks
        self._max_gap = max_gap * frame_ticks
        self._slot = frame_ticks  # duration of the last packet: the size of a lost one
        # Timestamps below are unwrapped (64-bit): the first packet's, then deltas.
        self._next: int | None = None
        self._held: dict[int, tuple[bytes, int]] = {}
        self._far_behind = 0
        self.late = 0
        """Packets dropped because they came after their time (or twice)."""
        self.discontinuities = 0

    @property
    def holding(self) -> bool:
        """Whether packets wait for a missing one."""
        return bool(self._held)

    @property
    def position(self) -> tuple[int, int] | None:
        """(the 32-bit RTP timestamp due next, the last packet's duration), once started."""
        if self._next is None:
            return None
        return self._next & 0xFFFFFFFF, self._slot

    def played(self, timestamp: int, slot: int) -> None:
        """Packets up to ``timestamp`` (32-bit; the last of them ``slot`` long) were
        played in order elsewhere (the compiled path): continue from there."""
        next_ts = self._next
        self._next = (
            timestamp if next_ts is None else next_ts + _timestamp_delta(timestamp, next_ts)
        )
        self._slot = slot
        self._far_behind = 0

    def push(self, timestamp: int, payload: bytes, duration: int = FRAME_TICKS) -> None:
        """Add a packet with its RTP timestamp and duration (in RTP clock ticks)."""
        next_ts = self._next
        if next_ts is None:
            self._play(timestamp, payload, duration)
            return
        ts = next_ts + _timestamp_delta(timestamp, next_ts)
        ahead = ts - next_ts
        if ahead == 0:
            self._far_behind = 0
            self._play(ts, payload, duration)
            if self._held:
                self._drain()
        elif ahead < 0:
            if ahead >= -self._max_gap:
                self._far_behind = 0
            else:
                # One very late packet, or a new timeline: a second such packet decides.
                self._far_behind += 1
                if self._far_behind >= 2:
                    self._far_behind = 0
                    self._held.clear()
                    self.discontinuities += 1
                    self._play(ts, payload, duration)
                    return
            self.late += 1
        else:
            self._far_behind = 0
            if ahead > self._max_gap:
                self.release()
                self.discontinuities += 1
                self._play(ts, payload, duration)
            elif ts in self._held:
                self.late += 1
            else:
                self._held[ts] = (payload, duration)
                self._drain()

    def release(self) -> None:
        """Stop waiting: give up the missing packets and hand on all held ones."""
        while self._held:
            self._give_up_or_play()

    def _drain(self) -> None:
        assert self._next is not None
        while self._held:
            if self._next not in self._held and max(self._held) - self._next <= self._window:
                return  # still within the reorder window
            self._give_up_or_play()

    def _give_up_or_play(self) -> None:
        assert self._next is not None
        entry = self._held.pop(self._next, None)
        if entry is not None:
            self._play(self._next, *entry)
            return
        gap = min(self._held) - self._next
        self._next += min(self._slot, gap)
        self._output(None)

    def _play(self, ts: int, payload: bytes, duration: int) -> None:
        self._next = ts + duration
        self._slot = duration
        self._output(payload)
