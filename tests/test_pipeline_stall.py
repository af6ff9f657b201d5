"""The loop's stall watch: every session's open-turn check, every 100 ms, on the frame clock."""

from __future__ import annotations

import asyncio
from typing import cast

import numpy as np
import pytest

from bots.echo import EchoBot
from gateway.calls import Call
from gateway.errors import GatewayError
from gateway.events import Direction
from gateway.media.audio import FRAME_SAMPLES, load_wav
from gateway.media.frameclock import TICK, TickCallback, frame_clock
from gateway.pipeline.session import BotSession
from gateway.pipeline.stall import STALL_CHECK_S, StallWatch, stall_watch
from gateway.pipeline.tts import TTS
from gateway.records import CallRecord

from .conftest import AUDIO


class HandClock:
    """A frame clock whose ticks are given by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.subscribed: list[TickCallback] = []

    def subscribe(self, callback: TickCallback) -> None:
        self.subscribed.append(callback)
        callback(self.now)  # as FrameClock does: once right away

    def unsubscribe(self, callback: TickCallback) -> None:
        self.subscribed.remove(callback)

    def last_tick(self) -> float:
        return self.now

    def tick(self, late: float = 0.0) -> None:
        self.now += TICK
        for callback in list(self.subscribed):
            callback(self.now + late)


def test_checks_run_every_fifth_tick_while_watched() -> None:
    clock = HandClock()
    watch = StallWatch(clock)  # type: ignore[arg-type]
    seen: list[tuple[str, float]] = []
    a = lambda now: seen.append(("a", now))  # noqa: E731
    b = lambda now: seen.append(("b", now))  # noqa: E731
    watch.watch(a)
    assert seen == []  # not at once: a check looks back a whole period
    clock.tick()
    watch.watch(b)
    assert len(clock.subscribed) == 1  # one callback on the clock for all checks
    for _ in range(4):
        clock.tick()
    assert [who for who, _ in seen] == ["a", "b"]
    for _ in range(5):
        clock.tick()
    assert [who for who, _ in seen] == ["a", "b", "a", "b"]
    assert seen[2][1] - seen[0][1] == pytest.approx(STALL_CHECK_S)
    watch.unwatch(a)
    watch.unwatch(a)  # twice: nothing
    for _ in range(5):
        clock.tick()
    assert [who for who, _ in seen][4:] == ["b"]
    watch.unwatch(b)
    assert clock.subscribed == [] and watch.watched == 0


def test_a_late_tick_does_not_shift_the_grid() -> None:
    clock = HandClock()
    watch = StallWatch(clock)  # type: ignore[arg-type]
    times: list[float] = []
    watch.watch(times.append)
    for _ in range(5):
        clock.tick()
    assert len(times) == 1
    for _ in range(4):
        clock.tick()
    clock.tick(late=0.015)  # the loop ran this tick late
    assert len(times) == 2
    for _ in range(5):
        clock.tick()
    assert len(times) == 3  # still every 5th tick, not one more after a late one


def test_a_check_that_raises_is_unwatched_alone(caplog: pytest.LogCaptureFixture) -> None:
    clock = HandClock()
    watch = StallWatch(clock)  # type: ignore[arg-type]
    ran: list[float] = []

    def broken(now: float) -> None:
        raise RuntimeError("boom")

    watch.watch(broken)
    watch.watch(ran.append)
    for _ in range(10):
        clock.tick()
    assert len(ran) == 2 and watch.watched == 1
    assert "stall check" in caplog.text


async def test_one_watch_per_loop_on_its_frame_clock() -> None:
    loop = asyncio.get_running_loop()
    watch = stall_watch(loop)
    assert stall_watch(loop) is watch
    clock = frame_clock(loop)
    before = clock.subscribers
    ran: list[float] = []
    watch.watch(ran.append)
    assert clock.subscribers == before + 1
    while not ran:
        await asyncio.sleep(TICK)
    watch.unwatch(ran.append)
    assert clock.subscribers == before


def _session() -> BotSession:
    call = Call(CallRecord("wacid.stall", Direction.USER_INITIATED, "1555"), graph=None)  # type: ignore[arg-type]
    return BotSession(call, EchoBot(), cast(TTS, None))  # the echo bot never speaks here


def _speak(session: BotSession) -> None:
    speech = load_wav(AUDIO / "cards-001.wav")
    n = len(speech) // FRAME_SAMPLES
    for frame in speech[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)[: n // 2]:
        session._on_frame(frame)  # the frames stop mid-sentence


async def test_a_session_is_watched_while_its_turn_is_open_and_closed_when_frames_stop() -> None:
    watch = stall_watch(asyncio.get_running_loop())
    session = _session()
    _speak(session)
    assert session._segmenter.in_speech and watch.watched == 1
    now = session._stall.tick_at
    hangover = session._segmenter.config.hangover_ms / 1000
    checks = 0
    while watch.watched:
        now += STALL_CHECK_S
        session._stall.check(now)  # no frame since: the clock runs toward the hangover
        checks += 1
    # The first check sees the frames since the turn opened; from there the
    # hangover passes in whole periods (one more if float sums fall just short).
    assert round(hangover / STALL_CHECK_S) <= checks - 1 <= round(hangover / STALL_CHECK_S) + 1
    assert not session._segmenter.in_speech
    assert session.metrics.utterances == 1


async def test_a_session_that_stops_listening_is_unwatched() -> None:
    watch = stall_watch(asyncio.get_running_loop())
    session = _session()
    _speak(session)
    assert watch.watched == 1
    session.listen(enabled=False)
    assert watch.watched == 0
    session._stall.cancel()  # again: nothing
    assert watch.watched == 0


async def test_time_the_event_loop_stalled_does_not_count_against_the_caller() -> None:
    session = _session()
    _speak(session)
    hangover = session._segmenter.config.hangover_ms / 1000
    now = session._stall.tick_at + STALL_CHECK_S
    session._stall.check(now)  # sees the frames since the turn opened
    now += STALL_CHECK_S + hangover  # one check that came a whole hangover late
    session._stall.check(now)
    assert session._segmenter.in_speech  # packets may be waiting unread: not a stall
    for _ in range(round(hangover / STALL_CHECK_S) + 1):
        now += STALL_CHECK_S
        session._stall.check(now)
    assert not session._segmenter.in_speech


async def test_each_turn_is_watched_again_and_a_wrong_frame_is_refused() -> None:
    """The session looks at the segmenter only at frames with a VAD action: a turn
    after one the stall check closed is still watched, and a frame of the wrong
    shape still gets the segmenter's error."""
    watch = stall_watch(asyncio.get_running_loop())
    session = _session()
    _speak(session)
    now = session._stall.tick_at
    while watch.watched:
        now += STALL_CHECK_S
        session._stall.check(now)
    assert not session._segmenter.in_speech
    _speak(session)  # the caller's packets come back: a new turn
    assert session._segmenter.in_speech and watch.watched == 1
    with pytest.raises(GatewayError, match="320 int16 samples"):
        session._on_frame(np.zeros(160, np.int16))
    session._stall.cancel()


class _WaitingBot(EchoBot):
    """Arms the no-input timeout at start, so the session waits with a deadline."""

    async def on_start(self, session: BotSession) -> None:
        session.expect_input(60.0)


async def test_a_session_cancelled_as_its_input_arrives_ends() -> None:
    """Python 3.11's ``asyncio.wait_for`` returns the inner result when the outer task is
    cancelled in the step the result arrives, and the cancel is gone: a session waiting
    with a deadline would then run on after its call closed it. Cancelled at each of the
    first steps after an input comes, the session task always ends cancelled."""
    for steps in range(8):
        call = Call(
            CallRecord(f"wacid.cancel{steps}", Direction.USER_INITIATED, "1555"), graph=None
        )  # type: ignore[arg-type]
        session = BotSession(call, _WaitingBot(), cast(TTS, None))
        task = asyncio.create_task(session.run())
        while session._input_deadline is None:
            await asyncio.sleep(0)
        for _ in range(3):
            await asyncio.sleep(0)  # the session is waiting for input now
        session.expect_input(60.0)  # an input (a wake-up) arrives ...
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()  # ... and the call closes the session around it
        done, _ = await asyncio.wait([task], timeout=5)
        assert task in done and task.cancelled(), f"cancel lost {steps} steps after the input"
