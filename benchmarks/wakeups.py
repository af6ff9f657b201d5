"""What wakes the gateway's event loop under the echo load, source by source.

Every time the loop's thread sleeps in ``epoll_wait`` and is woken costs the
process CPU of its own (on this VM about 0.1-0.25 ms, see docs/performance.md),
whatever then runs; wake-ups that fall on the same instant share one. This
runs the echo load (simulated callers speaking ../shared/audio, 10 calls/s, as
``cpu_ab.py``) against a gateway process whose selector is wrapped: after each
``select`` that slept (the thread's voluntary context switches rose,
``getrusage(RUSAGE_THREAD)``) it names what woke it:

- the timers then due, by callback (a task's ``asyncio.sleep`` or timeout by
  the task's coroutine),
- the sockets then readable, by protocol (``frame_costs.callback_name``),
- for the loop's self-pipe, what other threads queued (``call_soon_threadsafe``:
  executor jobs, aiosqlite's thread).

A wake-up with several causes counts once for each (``wake/s``); ``alone/s`` is
the wake-ups it was the only cause of, the ones it costs by itself. The thread's
sleeps outside the selector (waiting for the GIL or a blocking call) are a row of
their own. Figures are per second between the load test's first and last
``/metrics`` scrape; the wrapper adds two ``getrusage`` calls per loop pass.

    python benchmarks/wakeups.py [--calls 10] [--duration 15] [--base REV]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import resource
import selectors
import sys
import threading
import time
from pathlib import Path
from typing import Any

from frame_costs import base_then_this, callback_name, snapshot_at_scrapes

HERE = Path(__file__).resolve()
OUTSIDE = "(sleeps outside the selector: the GIL, blocking calls)"


def serve_traced(out: str, tree: str = "") -> int:
    """The gateway's ``serve`` with its wake-ups named; the counts go to ``out``."""
    if tree:
        sys.path.insert(0, tree)
    from gateway.cli import main

    counts: dict[str, list[int]] = {}  # name: [wake-ups, of which alone]
    in_select = [0]
    main_thread = threading.get_ident()
    select = selectors.EpollSelector.select

    def switches() -> int:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw

    def traced_select(
        self: selectors.EpollSelector, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        before = switches()
        events = select(self, timeout)
        slept = switches() - before
        loop = asyncio.events._get_running_loop()
        if slept and loop is not None and threading.get_ident() == main_thread:
            in_select[0] += slept
            causes = _causes(loop, events)
            for cause in causes:
                entry = counts.setdefault(cause, [0, 0])
                entry[0] += 1
                entry[1] += len(causes) == 1
        return events

    selectors.EpollSelector.select = traced_select  # type: ignore[method-assign]
    snapshots = snapshot_at_scrapes(
        lambda: {
            "t": time.monotonic(),
            "sleeps": switches(),
            "in_select": in_select[0],
            "counts": {k: list(v) for k, v in counts.items()},
        }
    )

    def dump() -> None:
        with open(out, "w") as f:
            json.dump(snapshots, f)

    atexit.register(dump)
    return main(["serve"])


def _causes(loop: Any, events: list[tuple[selectors.SelectorKey, int]]) -> set[str]:
    causes = set()
    for key, mask in events:
        reader, writer = key.data if isinstance(key.data, tuple) else (None, None)
        if mask & selectors.EVENT_READ and reader is not None:
            if getattr(reader._callback, "__name__", "") == "_read_from_self":
                # A thread's call_soon_threadsafe: what it queued is in the ready queue.
                queued = [callback_name(h._callback) for h in loop._ready]
                causes.update(f"thread: {name}" for name in queued or ["(nothing queued)"])
            else:
                causes.add(callback_name(reader._callback))
        if mask & selectors.EVENT_WRITE and writer is not None:
            causes.add("socket write: " + callback_name(writer._callback))
    end = loop.time() + loop._clock_resolution
    for handle in loop._scheduled:
        if handle._when < end and not handle._cancelled:
            causes.add(_timer_name(handle))
    return causes


def _timer_name(handle: Any) -> str:
    callback = handle._callback
    name = getattr(callback, "__qualname__", "")
    waiter = None
    if name == "_set_result_unless_cancelled":  # asyncio.sleep
        kind, waiter = "sleep", handle._args[0]
    elif name == "Timeout._on_timeout":  # asyncio.timeout, wait_for
        task = callback.__self__._task
        return "timeout: task " + getattr(task.get_coro(), "__qualname__", "?")
    elif name == "FrameClock._fire":  # FrameClock.sleep_until (sleep_on_grid): its waiters
        kind, waiters = "frame clock sleep", callback.__self__._waiters.get(handle._args[0])
        waiter = waiters[0] if waiters else None
    if waiter is not None:
        for wakeup, _ in waiter._callbacks or ():
            return f"{kind}: {callback_name(wakeup)}"
    return "timer: " + callback_name(callback)


async def load(calls: int, duration: float, out: str, tree: str = "") -> dict[str, Any]:
    from echo_load import run_echo_calls

    command = (sys.executable, str(HERE), "--serve", out, tree)
    return await run_echo_calls(calls, duration, server_command=command)


def table(first: dict[str, Any], last: dict[str, Any], calls: int, call_seconds: float) -> str:
    """Wake-ups a second by source between two scrapes (the load test's first and last,
    between which it counted ``call_seconds``)."""
    seconds = last["t"] - first["t"]
    sleeps = (last["sleeps"] - first["sleeps"]) / seconds
    outside = sleeps - (last["in_select"] - first["in_select"]) / seconds
    rows = []
    for name, (n, alone) in last["counts"].items():
        n0, alone0 = first["counts"].get(name, (0, 0))
        if n > n0:
            rows.append((name, (n - n0) / seconds, (alone - alone0) / seconds))
    rows.sort(key=lambda row: -row[1])
    lines = [
        f"the event loop's wake-ups by cause, {calls} echo calls, {seconds:.0f} s between the "
        f"load test's first and last scrape: the main thread slept {sleeps:.1f} times a second "
        f"({sleeps * seconds / call_seconds:.2f} per call-second)",
        f"  {'cause':<80} {'wake/s':>7} {'alone/s':>7}",
    ]
    lines += [f"  {name[:80]:<80} {n:7.2f} {alone:7.2f}" for name, n, alone in rows]
    lines.append(f"  {OUTSIDE:<80} {outside:7.2f} {outside:7.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace, out: str, tree: str) -> None:
    """One load test against a traced gateway; prints its table."""
    report = asyncio.run(load(args.calls, args.duration, out, tree))
    with open(out) as f:
        snapshots = json.load(f)
    if len(snapshots) < 2:
        print("(the gateway was scraped fewer than twice: no window)")
        return
    g = report["gateway"]
    print(table(snapshots[0], snapshots[-1], args.calls, g["call_seconds"]))
    print(
        f"  (read from /proc by the load tester, start to end of the calls: "
        f"{g['wakeups_per_second']:.1f} a second, {g['cpu_ms_per_call_second']:.1f} ms CPU "
        "per call-second, traced)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--base", help="also run this git revision (first)")
    from echo_load import add_phases_option, use_phases

    add_phases_option(parser)
    args = parser.parse_args()
    use_phases(args.phases)
    base_then_this(args.base, lambda out, tree: run(args, out, tree))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        sys.exit(serve_traced(*sys.argv[2:4]))
    logging.basicConfig(level=logging.ERROR)
    main()
