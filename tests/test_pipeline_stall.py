"""The loop's stall watch: every session's open-turn check, every 100 ms, on the frame clock."""

from __future__ import annotations

import asyncio

import pytest

from gateway.media.frameclock import TICK, TickCallback, frame_clock
from gateway.pipeline.stall import STALL_CHECK_S, StallWatch, stall_watch


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
