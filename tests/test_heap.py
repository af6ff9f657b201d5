"""Ended calls' heap goes back to the OS: one malloc_trim after a burst of call ends."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
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


# In a fresh interpreter: how many of 40 blocks of argv[2] bytes get a mapping of
# their own (glibc's count of mmapped blocks while they live), after
# heap.map_large_allocations() if argv[1] says so? glibc maps a block only when the
# heap would have to grow for it: the first may fit in the heap's free top.
MAPPED = """
import ctypes, sys

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
if sys.argv[1] == "map":
    from gateway import heap

    print(heap.map_large_allocations())
else:
    print("default")
before = mallinfo2().hblks
blocks = [bytearray(int(sys.argv[2])) for _ in range(40)]
print(mallinfo2().hblks - before)
"""


def _mapped(mode: str, size: int, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", MAPPED, mode, str(size)],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.split()


def test_a_calls_big_buffers_get_mappings_of_their_own() -> None:
    # Two seconds of a caller's speech (64 KB) are below glibc's default threshold...
    turn = 2 * 16000 * 2
    assert heap.MMAP_THRESHOLD < turn < 128 * 1024
    assert _mapped("default", turn) == ["default", "0"]
    # ...and mapped on their own (given back when freed) once the gateway set its own.
    said, mapped = _mapped("map", turn)
    assert said == "True" and int(mapped) >= 30
    # Small objects stay in the heap.
    assert _mapped("map", heap.MMAP_THRESHOLD // 2) == ["True", "0"]


def test_an_operators_malloc_setting_is_left_as_it_is() -> None:
    assert _mapped("map", 2 * 16000 * 2, MALLOC_MMAP_THRESHOLD_="1048576") == ["False", "0"]
