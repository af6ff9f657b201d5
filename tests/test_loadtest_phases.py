"""The load tester's callers send at phases of their own, or all on the loop's shared clock."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest
from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtcpParameters, RTCRtpSendParameters

from gateway.loadtest import LoadTestConfig, run_load_test
from gateway.loadtest.phases import PHASE_STEP, PHASES, PhaseClocks, draw_phases
from gateway.media.frameclock import TICK, FrameClock, frame_clock
from gateway.media.playout import PlayoutTrack
from gateway.media.sender import PlayoutSender

from .test_media_sender import OPUS, RecordingTransport


def test_phases_are_drawn_from_the_seed_in_whole_steps() -> None:
    phases = draw_phases(200, seed=7)
    assert phases == draw_phases(200, seed=7)  # reproducible
    assert phases != draw_phases(200, seed=8)
    assert all(0 <= p < PHASES for p in phases)
    assert len(set(phases)) == PHASES  # 200 callers use every phase
    assert PHASES * PHASE_STEP == pytest.approx(TICK)


async def test_one_clock_per_phase_offset_from_the_shared_grid() -> None:
    loop = asyncio.get_running_loop()
    clocks = PhaseClocks(loop)
    shared = frame_clock(loop)
    assert clocks.clock(0) is shared  # phase 0 adds no timer
    assert clocks.clock(7) is clocks.clock(7)  # callers of one phase share one
    assert clocks.clock(7) is not clocks.clock(8)
    for phase in (1, 7, PHASES - 1):
        offset = (clocks.clock(phase).next_tick() - shared.next_tick()) % TICK
        assert offset == pytest.approx(phase * PHASE_STEP, abs=1e-9)
    with pytest.raises(ValueError):
        clocks.clock(PHASES)


class TimedTransport(RecordingTransport):
    """Records, with each packet, its frame clock's scheduled tick and the loop time."""

    def __init__(self, clock: FrameClock) -> None:
        super().__init__()
        self.clock = clock
        self.ticks: list[tuple[float, float]] = []

    def send_rtp_now(self, data: bytes) -> None:
        before = len(self.rtp)
        super().send_rtp_now(data)
        if len(self.rtp) > before:
            self.ticks.append((self.clock.ticked[0], asyncio.get_running_loop().time()))


async def start_sender(track: PlayoutTrack, transport: TimedTransport) -> RTCRtpSender:
    sender = PlayoutSender.adopt(RTCRtpSender(track, transport))  # type: ignore[arg-type]
    await sender.send(
        RTCRtpSendParameters(codecs=[OPUS], muxId="audio", rtcp=RTCRtcpParameters(cname="gw"))
    )
    return sender


async def test_callers_send_every_20ms_each_at_its_phase() -> None:
    loop = asyncio.get_running_loop()
    clocks = PhaseClocks(loop)
    shared = frame_clock(loop)
    phases = [0, 0, 5, 13]  # two on the shared clock, two at phases of their own
    transports = [TimedTransport(clocks.clock(p)) for p in phases]
    tracks = [PlayoutTrack(clock=clocks.clock(p)) for p in phases]
    senders = [await start_sender(t, tr) for t, tr in zip(tracks, transports, strict=True)]
    await asyncio.sleep(0.3)
    grid = shared.ticked[0]  # a tick of the shared clock
    # The frames sent from a tick of the sender's clock: its first goes at once, at
    # subscribing (with the second, if that is due within half a millisecond).
    ticked = [[(t, at) for t, at in tr.ticks[1:] if t > -math.inf] for tr in transports]
    for phase, transport, sent in zip(phases, transports, ticked, strict=True):
        assert len(sent) >= 5
        for tick, at in sent:
            # Sent from a tick of its own clock, on the shared grid shifted by its phase,
            # never before that tick.
            lines = (tick - grid - phase * PHASE_STEP) / TICK
            assert lines == pytest.approx(round(lines), abs=1e-6)
            assert at >= tick - 1e-6
        # One frame per 20 ms of its media clock (RTP timestamps; a stalled loop may
        # skip slots, never squeeze them).
        stamps = [int.from_bytes(p[4:8]) for p in transport.rtp]
        assert all(((b - a) & 0xFFFFFFFF) % 960 == 0 for a, b in itertools.pairwise(stamps))
        assert all((b - a) & 0xFFFFFFFF > 0 for a, b in itertools.pairwise(stamps))
    # The two shared ones went out in the same passes of the one shared tick; the
    # phased ones at instants of their own.
    ticks = [{t for t, _ in sent} for sent in ticked]
    assert ticks[1] <= ticks[0]
    assert not ticks[0] & ticks[2] and not ticks[0] & ticks[3] and not ticks[2] & ticks[3]
    for sender in senders:
        await sender.stop()
    # Each sender left its clock: no timer ticks for nothing.
    assert all(clocks.clock(p)._ticker is None for p in set(phases))


async def test_callers_on_the_shared_clock_as_before_hear_the_echo() -> None:
    # The default (independent phases) runs in test_loadtest.py's small load test.
    from .conftest import AUDIO

    config = LoadTestConfig(
        calls=2,
        rate=5,
        duration=4,
        audio=[str(AUDIO / "cards-001.wav")],
        progress=False,
        phases="shared",
    )
    report = await run_load_test(config)
    assert report["ended_cleanly"] == 2, report["failures"]
    assert report["config"]["phases"] == "shared"
    assert report["metrics_ms"]["response"]["count"] >= 2  # every caller heard its echo
    assert all(c["phase_ms"] is None for c in report["per_call"])
    gen = report["generator"]
    assert gen["cpu_ms_per_call_second"] > 0 and gen["wakeups_per_second"] > 0


async def test_an_unknown_phases_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="phases"):
        await run_load_test(
            LoadTestConfig(calls=1, rate=1, duration=1, audio=[], phases="random")  # type: ignore[arg-type]
        )
