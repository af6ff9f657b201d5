"""One call's recording: the Opus packets both ways, kept as they pass, and their timing.

Nothing is decoded or encoded for it. The inbound path appends each caller
packet with its arrival time and RTP timestamp to :attr:`CallRecording.caller`;
the playout track appends each bot speech packet with its media time (pts) to
:attr:`CallRecording.bot` (silence is not kept: it is the same packet every
time). At the end, :meth:`CallRecording.write` (in a worker thread) places both
sides on one 20 ms grid counted from the moment recording began, and writes a
two-stream Ogg Opus file: caller left, bot right (each grid slot is one
multistream packet: the caller's packet self-delimited, then the bot's; see
:func:`.ogg.multistream_packet`).

Alignment: the caller's packets are placed by RTP timestamp, anchored at the
least-delayed arrival (network jitter does not move them); a jump in RTP time
that arrival times do not show (a restarted stream) starts a new anchor. The
bot's by their pts on the playout clock, which runs on the event loop's: after a
stall the playout sends late frames back to back, and the caller's phone plays
them by RTP time, which is what the recording follows. Both are brought to
wall-clock time, so the two channels line up to a frame (20 ms).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..media.opus import FRAME_TICKS, OPUS_RATE, packet_duration, silence_packet
from .ogg import self_delimited, write_opus

FRAME: Final = FRAME_TICKS / OPUS_RATE  # 0.02 s
NTP_UNIX_OFFSET_MS: Final = 2_208_988_800_000  # aiortc's arrival times count from 1900
# Reading the loop clock between two wall-clock reads: taken again if they are further
# apart than this (the process was preempted), at most this many times.
_OFFSET_SPREAD: Final = 0.001
_OFFSET_READS: Final = 5
_DISCONTINUITY: Final = 0.5  # an RTP jump (s) that arrival times do not show: a new timeline


@dataclass(frozen=True)
class RecordingResult:
    """What :meth:`CallRecording.write` produced."""

    path: Path
    seconds: float
    caller_packets: int
    bot_packets: int
    skipped_packets: int
    """Caller packets not of 20 ms (they cannot share the grid without a re-encode)."""


def clock_offset(
    loop_clock: Callable[[], float], wall_clock: Callable[[], float] = time.time
) -> tuple[float, float]:
    """The wall-clock time now, and what to add to a ``loop_clock`` time to make it one.

    The loop clock is read between two readings of the wall clock: were the process
    preempted between two plain reads (a loaded machine), the offset would be off by that
    long and the bot's channel would sit that far from the caller's. A read the process
    was preempted in is taken again (the closest pair of a few is kept).
    """
    best: tuple[float, float, float] | None = None
    for _ in range(_OFFSET_READS):
        before = wall_clock()
        loop_now = loop_clock()
        after = wall_clock()
        if best is None or after - before < best[0]:
            best = (after - before, after, (before + after) / 2 - loop_now)
        if after - before < _OFFSET_SPREAD:
            break
    assert best is not None
    return best[1], best[2]


class CallRecording:
    """The packets of one call; :meth:`write` makes the file (blocking, run it off the loop)."""

    def __init__(self, call_id: str, path: Path, *, loop_clock: Callable[[], float]) -> None:
        self.call_id = call_id
        self.path = path
        # Converts event-loop times (the playout clock) into wall-clock times.
        self.started_wall, self._loop_to_wall = clock_offset(loop_clock)
        self.ended_wall: float | None = None
        self.caller: list[tuple[int, int, bytes]] = []
        self.bot: list[tuple[int, bytes]] = []
        self.bot_start_loop: float | None = None

    def stop(self, bot_start_loop: float | None) -> None:
        """Mark the end (the taps are already off); ``bot_start_loop`` is the playout's pts 0."""
        self.ended_wall = time.time()
        self.bot_start_loop = bot_start_loop

    # --- placing packets on the grid -------------------------------------------------

    def _slot(self, wall: float) -> int:
        return round((wall - self.started_wall) / FRAME)

    def caller_slots(self) -> tuple[dict[int, bytes], int]:
        """Caller packets by 20 ms slot, and how many had to be skipped."""
        slots: dict[int, bytes] = {}
        skipped = 0
        for segment in _segments(self.caller):
            # The least-delayed packet gives the segment's offset from RTP time to wall time.
            offset = min(arrival - rtp for arrival, rtp, _ in segment)
            for _, rtp, payload in segment:
                try:
                    if packet_duration(payload) != FRAME_TICKS:
                        skipped += 1
                        continue
                except ValueError:
                    skipped += 1
                    continue
                slots.setdefault(self._slot(rtp + offset), payload)
        return slots, skipped

    def bot_slots(self) -> dict[int, bytes]:
        """Bot speech packets by 20 ms slot."""
        if self.bot_start_loop is None:
            return {}
        start = self.bot_start_loop + self._loop_to_wall
        return {self._slot(start + pts / OPUS_RATE): payload for pts, payload in self.bot}

    # --- the file ------------------------------------------------------------------------

    def write(self) -> RecordingResult:
        """Write the file (atomically: a temporary name, then renamed)."""
        end = self.ended_wall or time.time()
        count = max(0, self._slot(end))
        caller, skipped = self.caller_slots()
        bot = self.bot_slots()
        silence = silence_packet()
        framed_silence = self_delimited(silence)  # the left stream is self-delimited

        def packets() -> Iterator[bytes]:
            for slot in range(count):
                left = caller.get(slot)
                right = bot.get(slot, silence)
                if left is None:
                    yield framed_silence + right
                    continue
                try:
                    yield self_delimited(left) + right
                except (ValueError, IndexError):  # a malformed caller packet: silence there
                    yield framed_silence + right

        partial = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.part")
        with open(partial, "wb") as out:
            write_opus(
                out,
                packets(),
                streams=2,
                serial=secrets.randbits(32),
                comments=[
                    f"TITLE=WhatsApp call {self.call_id}",
                    "COMMENT=left: caller, right: bot",
                    f"DATE={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.started_wall))}",
                ],
            )
        partial.replace(self.path)
        return RecordingResult(
            path=self.path,
            seconds=count * FRAME,
            caller_packets=sum(1 for s in caller if 0 <= s < count),
            bot_packets=sum(1 for s in bot if 0 <= s < count),
            skipped_packets=skipped,
        )


def _segments(
    packets: list[tuple[int, int, bytes]],
) -> Iterator[list[tuple[float, float, bytes]]]:
    """Caller packets in seconds (arrival wall time, unwrapped RTP time), split where the
    RTP timeline jumps (a new stream or a restart) rather than following arrival."""
    segment: list[tuple[float, float, bytes]] = []
    last: tuple[float, int, float] | None = None  # arrival, raw timestamp, unwrapped seconds
    for arrival_ms, timestamp, payload in packets:
        arrival = (arrival_ms - NTP_UNIX_OFFSET_MS) / 1000
        if last is None:
            rtp = 0.0
        else:
            delta = ((timestamp - last[1] + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
            rtp = last[2] + delta / OPUS_RATE
            jump = delta / OPUS_RATE
            # RTP time is trusted (a network stall delays arrivals, not timestamps) unless
            # it jumps by itself: a restarted or new stream.
            if abs(jump) > _DISCONTINUITY and abs(jump - (arrival - last[0])) > _DISCONTINUITY:
                yield segment
                segment, rtp = [], 0.0
        segment.append((arrival, rtp, payload))
        last = (arrival, timestamp, rtp)
    if segment:
        yield segment
