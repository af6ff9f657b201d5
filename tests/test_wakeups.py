"""Periodic timers on the frame clock's grid: with calls up they wake the loop with the tick.

Each sleep and wake-up of the event loop costs the process CPU of its own, and
timers due at one instant run in one pass of the loop. These tests count the
loop's passes that go to sleep (``select`` with a timeout other than 0) while
the frame clock ticks, and check that the loop-lag monitor, the heap trimmer and
:func:`sleep_on_grid` (the calls' media watch) add none of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import selectors
from typing import Any

from gateway import heap
from gateway.heap import HeapTrimmer
from gateway.media.frameclock import TICK, FrameClock, call_on_grid, frame_clock, sleep_on_grid
from gateway.metrics.loop import AFTER_TICK, LoopLagMonitor


class Passes:
    """Counts the loop's passes, and those that went to sleep, by wrapping its selector."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.count = 0
        self.sleeps = 0
        self._selector: Any = loop._selector  # type: ignore[attr-defined]
        self._select = self._selector.select
        self._selector.select = self._counted

    def _counted(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.count += 1
        if timeout is None or timeout > 0:
            self.sleeps += 1
        events: list[tuple[selectors.SelectorKey, int]] = self._select(timeout)
        return events

    def close(self) -> None:
        del self._selector.select  # the instance's wrapper: the class's method again


def _ticking(loop: asyncio.AbstractEventLoop) -> tuple[list[float], Any]:
    """Start the loop's frame clock (as a call's audio does); its ticks go to the list."""
    ticks: list[float] = []
    clock = frame_clock(loop)
    clock.subscribe(ticks.append)
    return ticks, lambda: clock.unsubscribe(ticks.append)


async def test_on_grid_is_the_clocks_own_tick_time() -> None:
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    _, stop = _ticking(loop)
    try:
        await clock.sleep_until(clock.on_grid(loop.time() + 3 * TICK))
        tick, ran = clock.ticked
        assert ran >= tick
        # Bit for bit the float of the clock's timer, from any time up to a tick before it
        # and from a grid time plus whole periods.
        assert clock.on_grid(tick) == tick
        assert clock.on_grid(tick - TICK + 1e-6) == tick
        assert clock.on_grid(tick - 5 * TICK + 0.1) == tick
        assert clock.on_grid(tick + 1e-6) == clock.on_grid(tick + TICK)
        assert clock.next_tick() == clock.on_grid(loop.time())
    finally:
        stop()


async def test_a_timer_on_the_grid_runs_in_the_ticks_pass() -> None:
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    passes = Passes(loop)
    tick_passes: dict[float, int] = {}
    _, stop = _ticking(loop)

    def note_pass(now: float) -> None:
        tick_passes[clock.ticked[0]] = passes.count

    clock.subscribe(note_pass)
    fired: asyncio.Future[int] = loop.create_future()
    try:
        handle = call_on_grid(loop, loop.time() + 0.05, lambda: fired.set_result(passes.count))
        assert clock.on_grid(handle.when()) == handle.when()
        assert loop.time() + 0.05 <= handle.when() < loop.time() + 0.05 + TICK
        assert await fired == tick_passes[handle.when()]
    finally:
        stop()
        clock.unsubscribe(note_pass)
        passes.close()


async def test_the_loop_lag_timer_adds_no_wakeup_while_the_clock_ticks() -> None:
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    samples: list[tuple[float, tuple[float, float], float]] = []
    enough: asyncio.Future[None] = loop.create_future()
    monitor: LoopLagMonitor

    def on_sample(lag: float) -> None:
        samples.append((lag, clock.ticked, monitor._due))
        if len(samples) == 4 and not enough.done():
            enough.set_result(None)

    monitor = LoopLagMonitor(on_sample=on_sample)  # 100 ms, the gateway's
    ticks, stop = _ticking(loop)
    passes = Passes(loop)
    try:
        first = len(ticks)
        monitor.start()
        assert monitor._timer is not None
        assert clock.on_grid(monitor._due) == monitor._due
        assert monitor._timer.when() == monitor._due + AFTER_TICK  # after the tick's timer
        first_due = monitor._due
        await enough  # a future, not a sleep: the test adds no timer of its own
        # Every pass that slept woke for a tick (one more: the first, before a tick).
        assert passes.sleeps <= len(ticks) - first + 1
        # A sample's own due time: the monitor sets the next one before on_sample.
        dues = [first_due] + [next_due for _, _, next_due in samples[:-1]]
        for (lag, (tick, ran), _), due in zip(samples, dues, strict=True):
            # The tick ran first in that pass, and its reading is the lag.
            assert tick == due
            assert lag == max(0.0, ran - due)
        # Never sooner than the interval, to the nearest tick.
        assert all(b - a > 4.5 * TICK for a, b in itertools.pairwise(dues))
    finally:
        passes.close()
        stop()
        await monitor.stop()


async def test_the_loop_lag_timer_runs_alone_without_calls_and_leaves_the_clock_stopped() -> None:
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    seen: list[float] = []
    enough: asyncio.Future[None] = loop.create_future()

    def on_sample(lag: float) -> None:
        seen.append(lag)
        if len(seen) == 2 and not enough.done():
            enough.set_result(None)

    monitor = LoopLagMonitor(interval=TICK, on_sample=on_sample)
    ticked = clock.ticked
    monitor.start()
    try:
        await enough
        assert clock.subscribers == 0 and clock.ticked == ticked  # the clock never ticked
    finally:
        await monitor.stop()


async def test_sleep_on_grid_wakes_with_the_tick() -> None:
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    ticks, stop = _ticking(loop)
    passes = Passes(loop)
    try:
        first = len(ticks)
        for _ in range(3):
            start = loop.time()
            await sleep_on_grid(0.05)
            assert clock.ticked[0] >= start + 0.05  # the tick it ended on, not before
        assert passes.sleeps <= len(ticks) - first + 1
    finally:
        passes.close()
        stop()


async def test_a_cancelled_sleep_takes_its_ticks_timer_along() -> None:
    """An ended call's media watch (a sleep on the grid, cancelled) leaves no timer
    behind to wake the loop later; a tick with a waiter left keeps its timer."""
    loop = asyncio.get_running_loop()
    clock = FrameClock(loop)
    fired: list[int] = []
    fire = clock._fire

    def spy(tick: int) -> None:
        fired.append(tick)
        fire(tick)

    clock._fire = spy  # type: ignore[method-assign]
    now = loop.time()
    lone_at, shared_at = clock.on_grid(now + 2 * TICK), clock.on_grid(now + 3 * TICK)
    lone = asyncio.create_task(clock.sleep_until(lone_at))
    ended, stays = (asyncio.create_task(clock.sleep_until(shared_at)) for _ in range(2))
    await asyncio.sleep(0)
    assert len(clock._waiters) == 2
    lone.cancel()
    ended.cancel()
    await asyncio.gather(lone, ended, return_exceptions=True)
    await stays  # the tick it shared with a cancelled sleep still came
    # Timers run in time order: the lone sleep's, a tick earlier, would have run by now.
    assert fired == [round((shared_at - clock._origin) / TICK)]
    assert not clock._waiters and not clock._timers


async def test_the_heap_trim_is_set_on_the_grid() -> None:
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    trimmer = HeapTrimmer()
    trimmer._trim = lambda pad: 1
    try:
        start = loop.time()
        trimmer.call_ended(None)  # type: ignore[arg-type]
        pending = trimmer._pending
        assert pending is not None
        assert clock.on_grid(pending.when()) == pending.when()
        assert start + heap.DELAY <= pending.when() < loop.time() + heap.DELAY + TICK
    finally:
        await trimmer.aclose()


async def test_a_lag_read_after_the_ticks_work_is_the_ticks_own() -> None:
    # Timers due at one instant run in the heap's order: when the clock's tick ran
    # first in the pass, the monitor reads the loop's wake-up as the tick saw it.
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    monitor = LoopLagMonitor()
    monitor.start()
    try:
        assert monitor._timer is not None
        monitor._timer.cancel()
        due = monitor._due
        ticked = clock.ticked
        clock.ticked = (due, due + 0.001)  # that tick's timer ran 1 ms late
        monitor._tick()  # ...and its callbacks' work took long before this timer's turn
        assert monitor.lags[-1] == (due + 0.001) - due
        clock.ticked = ticked
    finally:
        await monitor.stop()
