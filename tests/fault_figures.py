"""The fault suite's figures: each slow fault test records its row, and
``make faults`` prints them as one table at the end of the run."""

from __future__ import annotations

import asyncio
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
