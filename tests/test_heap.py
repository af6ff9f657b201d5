"""Ended calls' heap goes back to the OS: one malloc_trim after a burst of call ends."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import heap
from gateway.heap import HeapTrimmer

from .conftest import Stack, answered_call


async def test_a_real_call_end_trims_the_heap(stack: Stack) -> None:
    trimmer = stack.gateway.heap
    assert trimmer.available  # glibc, as on the machines the gateway runs on
    assert trimmer in stack.gateway.calls.observers
    call = await answered_call(stack)
    assert trimmer.trims == 0
    await call.hang_up()
    async with asyncio.timeout(10):
        while trimmer.trims == 0:
            await asyncio.sleep(0.05)


class _Counting:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


def _trimmer() -> tuple[HeapTrimmer, _Counting]:
    trimmer = HeapTrimmer()
    counting = _Counting()
    trimmer._trim = counting
    return trimmer, counting


async def _settled(trimmer: HeapTrimmer) -> None:
    # Until the pending trim (if any) has run to its end.
    async with asyncio.timeout(10):
        while trimmer._pending is not None or trimmer._running is not None:
            await asyncio.sleep(0.02)


async def test_a_burst_of_ends_is_one_trim_and_trims_are_spaced() -> None:
    trimmer, counting = _trimmer()
    call: Any = None  # the trimmer does not look at the call
    for _ in range(5):
        trimmer.call_ended(call)
    await _settled(trimmer)
    assert counting.calls == [0] and trimmer.trims == 1

    # The next end waits for MIN_INTERVAL after the last trim, not just DELAY.
    trimmer.call_ended(call)
    pending = trimmer._pending
    assert pending is not None
    assert pending.when() >= trimmer._last + heap.MIN_INTERVAL
    trimmer.call_ended(call)
    assert trimmer._pending is pending  # coalesced
    await trimmer.aclose()
    assert pending.cancelled() and trimmer._pending is None
    assert counting.calls == [0]


async def test_without_malloc_trim_call_ends_do_nothing() -> None:
    trimmer = HeapTrimmer()
    trimmer._trim = None  # e.g. musl or macOS
    trimmer.call_ended(None)  # type: ignore[arg-type]
    assert trimmer._pending is None
    await trimmer.aclose()
