"""The fault suite's figures: each slow fault test records its row, and
``make faults`` prints them as one table at the end of the run."""

from __future__ import annotations

import _sqlite3
import asyncio
import ctypes
import gc
import os
import resource

ROWS: list[tuple[str, str]] = []


def record(row: str, figures: str) -> None:
    """Add one row (what was broken) with its measured figures (as text)."""
    ROWS.append((row, figures))
    print(f"\nFAULT {row}: {figures}")


def rss_mb() -> float:
    """This process's resident set size now, in MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def threads() -> int:
    """Threads of this process (native ones included)."""
    return len(os.listdir("/proc/self/task"))


def fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def tasks() -> int:
    """asyncio tasks not done."""
    return sum(1 for t in asyncio.all_tasks() if not t.done())


def settle() -> int:
    """Free what is already unreachable, as a leak check must before it reads RSS.

    A full garbage collection (returns the unreachable objects it found), then
    glibc's ``malloc_trim(0)``, as the gateway's heap trimmer does after calls end.
    """
    found = gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return found


def sqlite_memory_mb() -> float:
    """Memory SQLite holds in this process (``sqlite3_memory_used``), in MB."""
    # dlsym on the module's handle also searches the libsqlite3 it links against.
    used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    used.restype = ctypes.c_int64
    return int(used()) / 1e6
