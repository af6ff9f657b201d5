"""The simulated callers of a load test, and what each one measures.

Callers are cheap, so the load generator is not what saturates the machine: what
they receive is counted, never decoded. Bot audio is told from silence by packet
size: the gateway sends silence as one cached 8-byte Opus packet, and any encoded
sound is several times larger.

A packet's lateness is timed from its arrival as the kernel stamped it (what a
phone's jitter buffer sees), not from when the generator's event loop got to it:
the generator runs every caller in one process, and reads their sockets at its own
20 ms tick, so its own queueing (tens of ms when its core is busy) is no lateness of
the gateway's. That queueing is counted apart (``late_at_read_packets``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiortc.rtp import RtpPacket

from .. import rtc
from ..media.frameclock import FrameClock
from ..media.inbound import InboundAudio
from ..media.pcm import PCM
from ..media.playout import MAX_BURST
from ..media.transport import InboundPacket
from ..sandbox.cloud import CloudAPISandbox
from ..sandbox.user import SimulatedUser, UserCall
from .recordings import Recording

log = logging.getLogger(__name__)

# Packets larger than this carry sound; the gateway's silence packet is 8 bytes.
SOUND_PACKET_BYTES = 16
# A packet arriving later than this after its RTP timestamp says is "late".
LATE_AFTER = 0.060


class _PacketCounter(InboundAudio):
    """Counts a caller's received packets (no decoding): sound, loss, lateness."""

    def __init__(self, call: UserCall, stats: CallStats) -> None:
        receiver = next(t.receiver for t in call.pc.getTransceivers())
        super().__init__(receiver, on_frame=_ignore, opus_pt=rtc.OPUS_PT, dtmf_pt=rtc.DTMF_PT)
        self.stats_ = stats
        self.first_seq: int | None = None
        self.max_seq = 0
        self.base_offset: float | None = None
        self.last_sound_at: float | None = None
        self.sound_waiters: list[tuple[float, asyncio.Future[float]]] = []
        self.first_packet = asyncio.Event()
        self.arrival_ms = 0
        self.base_read_offset: float | None = None

    def receive(self, packet: RtpPacket | InboundPacket, arrival_time_ms: int) -> None:
        # The kernel's arrival stamp when the socket is read at the tick (asyncio's
        # read time otherwise), for _push_audio, which the base class calls.
        self.arrival_ms = arrival_time_ms
        super().receive(packet, arrival_time_ms)

    def _push_audio(self, packet: RtpPacket | InboundPacket) -> None:
        now = time.perf_counter()
        s = self.stats_
        s.packets_received += 1
        if s.first_packet_at is None:
            s.first_packet_at = now
            self.first_packet.set()
        # Sequence numbers wrap at 2**16; unwrap against the highest seen.
        seq = packet.sequence_number
        if self.first_seq is None:
            self.first_seq = self.max_seq = seq
        else:
            delta = (seq - (self.max_seq & 0xFFFF)) & 0xFFFF
            if delta < 0x8000:
                self.max_seq += delta
        media_time = packet.timestamp / 48000
        offset = self.arrival_ms / 1000 - media_time
        if self.base_offset is None or offset < self.base_offset:
            self.base_offset = offset
        elif offset - self.base_offset > LATE_AFTER:
            s.late_packets += 1
        offset = now - media_time
        if self.base_read_offset is None or offset < self.base_read_offset:
            self.base_read_offset = offset
        elif offset - self.base_read_offset > LATE_AFTER:
            s.late_at_read_packets += 1
        if len(packet.payload) > SOUND_PACKET_BYTES:
            s.sound_packets += 1
            self.last_sound_at = now
            if self.sound_waiters:
                waiters, self.sound_waiters = self.sound_waiters, []
                for after, fut in waiters:
                    if now >= after and not fut.done():
                        fut.set_result(now)
                    elif not fut.done():
                        self.sound_waiters.append((after, fut))

    def lost(self) -> int:
        if self.first_seq is None:
            return 0
        return max(0, self.max_seq - self.first_seq + 1 - self.stats_.packets_received)

    def next_sound(self, after: float) -> asyncio.Future[float]:
        """A future resolved with the arrival time of the first sound packet after ``after``."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.sound_waiters.append((after, fut))
        return fut


def _ignore(frame: PCM) -> None:
    pass


@dataclass
class CallStats:
    """What one simulated caller measured."""

    index: int
    call_id: str = ""
    phase_ms: float | None = None  # its frames' phase after the generator's grid; None: shared
    setup_accept_ms: float | None = None  # connect webhook sent -> accept received
    setup_media_ms: float | None = None  # connect webhook sent -> first packet received
    response_ms: list[float] = field(default_factory=list)
    barge_in_stop_ms: list[float] = field(default_factory=list)
    utterances: int = 0
    packets_sent: int = 0
    speech_packets_sent: int = 0  # of those, the recordings' (not the silence between them)
    packets_received: int = 0
    sound_packets: int = 0
    lost_packets: int = 0
    late_packets: int = 0  # by the kernel's arrival stamp
    late_at_read_packets: int = 0  # by when the generator's loop read them
    ended_cleanly: bool = False
    failure: str | None = None
    first_packet_at: float | None = None


async def run_caller(
    sandbox: CloudAPISandbox,
    index: int,
    recordings: Sequence[Recording],
    duration: float,
    rng: random.Random,
    barge_in_every: int = 3,
    clock: FrameClock | None = None,
) -> CallStats:
    """One simulated caller: call, talk for ``duration`` seconds, measure, hang up.

    ``clock``: the frame clock it sends on (default: the loop's shared one).
    """
    stats = CallStats(index)
    user = SimulatedUser(sandbox, f"1555{index:07d}", f"Caller {index}")
    started = time.perf_counter()
    call: UserCall | None = None
    counter: _PacketCounter | None = None
    try:
        # The callers share one process: after a stall of it they skip RTP time as the
        # gateway's playout does, rather than all of them bursting at once.
        call = await user.place_call(inbound=False, clock=clock, max_burst=MAX_BURST)
        stats.call_id = call.call_id
        counter = _PacketCounter(call, stats)
        counter.attach()
        async with asyncio.timeout(20):
            await call.accepted.wait()
            stats.setup_accept_ms = (time.perf_counter() - started) * 1000
            await call.media_up.wait()
            await counter.first_packet.wait()
        assert stats.first_packet_at is not None
        stats.setup_media_ms = (stats.first_packet_at - started) * 1000
        end_at = time.perf_counter() + duration
        turn = 0
        while time.perf_counter() < end_at and not call.ended.is_set():
            recording = recordings[(index + turn) % len(recordings)]
            turn += 1
            await call.play_packets(recording.packets).wait()
            stats.utterances += 1
            spoke_at = time.perf_counter() - recording.trailing_silence
            try:
                async with asyncio.timeout(5.0):
                    heard_at = await counter.next_sound(spoke_at)
            except TimeoutError:
                stats.failure = stats.failure or "no bot response within 5 s"
                continue
            stats.response_ms.append((heard_at - spoke_at) * 1000)
            if barge_in_every and turn % barge_in_every == 0 and recording.seconds > 1.0:
                # Talk over the bot's reply and time how long its audio keeps coming.
                await asyncio.sleep(0.3)
                barge_at = time.perf_counter()
                playback = call.play_packets(recording.packets)
                await asyncio.sleep(1.0)
                if counter.last_sound_at is not None and counter.last_sound_at > barge_at:
                    stats.barge_in_stop_ms.append((counter.last_sound_at - barge_at) * 1000)
                await playback.wait()
                # Let the bot answer the barge-in utterance before the next turn.
                await asyncio.sleep(1.0)
            await asyncio.sleep(rng.uniform(1.2, 2.5))
        stats.packets_sent = call.playout.stats.frames_sent
        stats.speech_packets_sent = call.playout.stats.speech_frames
        if call.ended.is_set():
            stats.failure = stats.failure or f"ended early: {call.end_reason}"
        else:
            await call.hang_up()
            stats.ended_cleanly = stats.failure is None
    except TimeoutError:
        stats.failure = "call setup timed out (20 s)"
    except Exception as exc:  # one broken call is a result, not a crash of the run
        stats.failure = f"{type(exc).__name__}: {exc}"
        log.exception("caller %d failed", index)
    finally:
        if counter is not None:
            stats.lost_packets = counter.lost()
            counter.detach()
        if call is not None:
            await call.close()
    return stats
