"""What each per-frame step costs inside a busy gateway, not in a tight loop.

A stage timed in a tight loop (``frame_path.py``, ``opus_codec.py``) runs with
its code and data hot in the caches. In the gateway each call's frame comes
between other calls' packets, SRTP, Opus and the event loop, and finds them
cold: the same step costs several times more. This runs the echo load
(simulated callers speaking ../shared/audio, 10 calls/s) against a gateway
process whose per-frame functions are wrapped to read the thread's CPU clock
(``CLOCK_THREAD_CPUTIME_ID``: no time another process had the core) before and
after each call, and prints per function its calls per inbound frame and its
mean and median CPU per call; ``us/frame`` (mean x calls per frame) is what it
adds to each 20 ms frame of a call. Rows nest (a function's time includes the
wrapped functions it calls) and each wrapper adds about one clock read (the
last row) to every enclosing row.

A second table splits the event loop's thread by callback (every ``Handle`` it
runs, timed): the calls' socket reads, the frame clock's tick, aiortc's RTCP
tasks, aioice's consent checks, the load tester's ``/metrics`` scrapes, the
timers; in ms per call-second between the load test's first and last scrape.

``--base REV`` runs the same load against that git revision too (exported, as
``cpu_ab.py`` does), one after the other, and prints both; ``--only NAME ...``
times only those functions (``Class.method``), so both sides carry the same
wrappers.

    python benchmarks/frame_costs.py [--calls 10] [--duration 15] [--base REV] [--only NAME ...]
        [--phases independent|shared]

``--phases shared``: every caller sends at the same instants (the load of the figures
measured before the option; default: each at a phase of its own, as phones do).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import functools
import inspect
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()

# (module, class, method), outermost first.
WRAPPED = [
    ("gateway.media.transport", "CallTransport", "_datagram_received"),
    ("gateway.media.opus", "OpusDecoder", "decode"),
    ("gateway.calls", "Call", "_on_frame"),
    ("gateway.pipeline.session", "BotSession", "_on_frame"),
    # Where the session's compiled listener takes the frames: Python at the VAD's actions only.
    ("gateway.pipeline.session", "BotSession", "_on_step"),
    ("gateway.pipeline.vad", "VadSegmenter", "push"),
    ("gateway.pipeline.vad", "VadSegmenter", "_step"),
    ("gateway.pipeline.vad", "VadSegmenter", "_gate"),
    ("gateway.media.frameclock", "FrameClock", "_on_tick"),
    # The calls' media sockets, read at the tick (gateway.media.tickread).
    ("gateway.media.tickread", "TickReader", "_tick"),
    ("gateway.media.tickread", "TickReader", "_read"),  # a socket (before drain_each)
    ("gateway.media.tickread", "TickReader", "_read_turn"),  # a turn of sockets
    ("gateway.media.sender", "PlayoutSender", "_on_tick"),
    ("gateway.media.playout", "PlayoutTrack", "poll"),
    # Only where a frame is encoded before it is sent (a tap, an on_frame_sent callback):
    # the sender's speech is encoded inside Outbound.send_pcm (C, not wrappable), so it
    # counts in PlayoutSender._on_tick.
    ("gateway.media.opus", "OpusEncoder", "encode"),
    ("gateway.media.transport", "CallTransport", "send_rtp_now"),
    ("aioice.ice", "StunProtocol", "datagram_received"),
    # The periodic per-call work: RTCP out (sender and receiver reports) and in.
    ("aiortc.rtcrtpsender", "RTCRtpSender", "_send_rtcp"),
    ("aiortc.rtcrtpreceiver", "RTCRtpReceiver", "_send_rtcp"),
    ("aiortc.rtcdtlstransport", "RTCDtlsTransport", "_send_rtp"),
    ("aiortc.rtcdtlstransport", "RTCDtlsTransport", "_handle_rtcp_data"),
    ("aiortc.rtcrtpsender", "RTCRtpSender", "_handle_rtcp_packet"),
    ("aiortc.rtcrtpreceiver", "RTCRtpReceiver", "_handle_rtcp_packet"),
    # The same, without aiortc's tasks (gateway.media.reports, .rtcp): the loop's one
    # report schedule (at every frame clock tick), the reports, and RTCP read in the
    # socket's callback.
    ("gateway.media.reports", "ReportSchedule", "_on_tick"),
    ("gateway.media.reports", "SenderReports", "report"),
    ("gateway.media.reports", "ReceiverReports", "report"),
    ("gateway.media.transport", "CallTransport", "send_rtcp_now"),
    ("gateway.media.transport", "CallTransport", "_rtcp_received"),  # Python's SRTCP
    ("gateway.media.transport", "CallTransport", "_rtcp_decrypted"),  # C's, or that one's
    ("gateway.metrics", "Metrics", "render"),
    # The scrape's parts: collectors, the live sessions' latency figures, the text.
    ("prometheus_client.process_collector", "ProcessCollector", "collect"),
    ("prometheus_client.gc_collector", "GCCollector", "collect"),
    ("gateway.metrics.calls", "_Collector", "collect"),
    ("gateway.metrics", "_ReceiverCollector", "collect"),
    ("gateway.metrics.calls", "CallMetrics", "drain_live"),
    ("gateway.metrics.exposition", "Exposition", "_write_direct"),
]


def serve_timed(out: str, tree: str = "", only: str = "") -> int:
    """The gateway's ``serve`` with the functions above timed; the figures go to ``out``.

    ``tree``: import the gateway from there; ``only``: a comma-separated subset to time.
    """
    import importlib

    if tree:
        sys.path.insert(0, tree)

    from gateway.cli import main

    clock = time.thread_time_ns
    samples: dict[str, list[int]] = {}

    def timed(function: Callable[..., Any], name: str) -> Callable[..., Any]:
        spent = samples.setdefault(name, [])

        if inspect.iscoroutinefunction(function):
            # Timed across its awaits: right for aiortc's RTCP coroutines, which never
            # suspend (their sends complete at once), not for ones that wait.
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                start = clock()
                try:
                    return await function(*args, **kwargs)
                finally:
                    spent.append(clock() - start)

            return functools.wraps(function)(async_wrapper)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                spent.append(clock() - start)

        return functools.wraps(function)(wrapper)

    for module, cls, method in WRAPPED:
        if only and f"{cls}.{method}" not in only.split(","):
            continue
        try:
            owner = getattr(importlib.import_module(module), cls, None)
        except ModuleNotFoundError:  # a revision (--base) without that module
            continue
        if owner is not None and hasattr(owner, method):
            setattr(owner, method, timed(getattr(owner, method), f"{cls}.{method}"))

    loop_work = _time_loop_callbacks(clock)
    snapshots = snapshot_at_scrapes(
        lambda: {
            "process_ns": time.process_time_ns(),
            "thread_ns": clock(),
            "loop": {k: list(v) for k, v in loop_work.items()},
        }
    )

    def dump() -> None:
        empty = samples.setdefault("(one clock read)", [])
        for _ in range(10000):
            start = clock()
            empty.append(clock() - start)
        with open(out, "w") as f:
            json.dump({"functions": samples, "snapshots": snapshots}, f)

    atexit.register(dump)
    return main(["serve"])


def snapshot_at_scrapes(take: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """The list to which each ``/metrics`` scrape of the gateway appends ``take()``.

    The load test's scrapes mark where its window may begin or end.
    """
    from gateway.metrics import Metrics

    snapshots: list[dict[str, Any]] = []
    render = Metrics.render

    def render_and_snapshot(self: Metrics) -> bytes:
        snapshots.append(take())
        return render(self)

    Metrics.render = render_and_snapshot  # type: ignore[method-assign]
    return snapshots


def _time_loop_callbacks(clock: Callable[[], int]) -> dict[str, list[int]]:
    """Time every callback the event loop runs, by what it is; ``{name: [ns, runs]}``.

    A task's steps count under its coroutine's name (aiortc's RTCP loops, aioice's
    consent checks, aiohttp's request handlers), a socket's reads under its
    protocol's class (the calls' RTP, with the compiled path, runs inside those),
    a timer or ``call_soon`` under its function. ``(the loop itself)`` is
    ``_run_once`` outside the callbacks: the selector, the timer heap.
    """
    work: dict[str, list[int]] = {}
    run_handle = asyncio.events.Handle._run
    run_once = asyncio.base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]
    inside = [0]
    name_of = callback_name

    def timed_run(handle: asyncio.Handle) -> None:
        start = clock()
        try:
            run_handle(handle)
        finally:
            spent = clock() - start
            inside[0] += spent
            entry = work.get(name := name_of(handle._callback))  # type: ignore[attr-defined]
            if entry is None:
                entry = work[name] = [0, 0]
            entry[0] += spent
            entry[1] += 1

    def timed_run_once(loop: asyncio.AbstractEventLoop) -> None:
        start, before = clock(), inside[0]
        try:
            run_once(loop)
        finally:
            spent = clock() - start - (inside[0] - before)
            entry = work.setdefault("(the loop itself: selector, timer heap)", [0, 0])
            entry[0] += spent
            entry[1] += 1

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    asyncio.base_events.BaseEventLoop._run_once = timed_run_once  # type: ignore[attr-defined]
    return work


_names: dict[Any, str] = {}


def callback_name(callback: Any) -> str:
    """What an event-loop callback is: a task's step by its coroutine, a socket's read by
    its protocol's class, anything else by its function (``package:qualname``)."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return "task " + getattr(coro, "__qualname__", type(coro).__name__)
    if owner is not None and getattr(callback, "__name__", "") == "_read_ready":
        protocol = type(getattr(owner, "_protocol", None))
        return f"socket read: {protocol.__module__.split('.')[0]}.{protocol.__qualname__}"
    function = getattr(callback, "__func__", callback)
    function = getattr(function, "__wrapped__", function)  # our timing wrappers
    key = getattr(function, "__code__", None) or type(function)
    name = _names.get(key)
    if name is None:
        module = getattr(function, "__module__", None) or ""
        name = _names[key] = f"{module.split('.')[0]}:" + (
            getattr(function, "__qualname__", None) or type(function).__qualname__
        )
    return name


async def load(
    calls: int,
    duration: float,
    out: str,
    tree: str = "",
    only: str = "",
    phases: str = "independent",
) -> dict[str, Any]:
    from echo_load import run_echo_calls

    command = (sys.executable, str(HERE), "--serve", out, tree, only)
    return await run_echo_calls(calls, duration, server_command=command, phases=phases)


def table(samples: dict[str, list[int]], frames: float) -> str:
    lines = [
        f"  {'function':<34} {'calls/frame':>11} {'mean us':>8} {'median us':>9} {'us/frame':>8}"
    ]
    for name, spent in samples.items():
        if not spent:
            continue
        mean, median = statistics.fmean(spent) / 1000, statistics.median(spent) / 1000
        per_frame = len(spent) / frames if frames and name != "(one clock read)" else 0.0
        lines.append(
            f"  {name:<34} {per_frame:11.2f} {mean:8.1f} {median:9.1f} {mean * per_frame:8.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--base", help="also run this git revision (first)")
    parser.add_argument("--only", nargs="*", default=[], help="time only these Class.method")
    from echo_load import add_phases_option

    add_phases_option(parser)
    args = parser.parse_args()
    only = ",".join(args.only)
    base_then_this(args.base, lambda out, tree: run(args, out, tree, only))


def base_then_this(base: str | None, run: Callable[[str, str], None]) -> None:
    """``run(out, tree)`` on ``base`` exported to ``tree`` (if given), then on this checkout
    (``tree`` empty); ``out`` is a fresh file path for each."""
    with tempfile.TemporaryDirectory() as tmp:
        if base:
            from cpu_ab import export

            tree = Path(tmp) / "base"
            tree.mkdir()
            commit = export(base, tree)
            print(f"=== base {base} ({commit})")
            run(str(Path(tmp) / "base.json"), str(tree))
            print("\n=== this checkout")
        run(str(Path(tmp) / "this.json"), "")


def run(args: argparse.Namespace, out: str, tree: str, only: str) -> None:
    """One load test against a timed gateway; prints its tables."""
    report = asyncio.run(load(args.calls, args.duration, out, tree, only, args.phases))
    with open(out) as f:
        data = json.load(f)
    samples, snapshots = data["functions"], data["snapshots"]
    gateway = report["gateway"]
    frames = 50 * gateway["call_seconds"]
    print(
        f"thread CPU per call of the per-frame functions inside the gateway, echo bot, "
        f"{args.calls} calls of {args.duration:.0f} s at {args.phases} phases "
        f"({gateway['call_seconds']:.0f} "
        f"call-seconds); the whole process: {gateway['cpu_ms_per_call_second']:.1f} ms "
        f"per call-second = {1000 * gateway['cpu_ms_per_call_second'] / 50:.0f} us per "
        f"inbound frame (timed, so a little above an untimed run); its event loop woke "
        f"{gateway['wakeups_per_second']:.0f} times a second"
    )
    print(table(samples, frames))
    if len(snapshots) >= 2:
        print()
        print(loop_table(snapshots[0], snapshots[-1], gateway["call_seconds"]))


def loop_table(first: dict[str, Any], last: dict[str, Any], call_seconds: float) -> str:
    """The event loop's CPU by callback between two scrapes, in ms per call-second."""
    per = 1e6 * (call_seconds or 1.0)
    process = (last["process_ns"] - first["process_ns"]) / per
    thread = (last["thread_ns"] - first["thread_ns"]) / per
    rows = []
    for name, (ns, runs) in last["loop"].items():
        ns0, runs0 = first["loop"].get(name, (0, 0))
        if ns > ns0:
            rows.append((name, (ns - ns0) / per, (runs - runs0) / (call_seconds or 1.0)))
    rows.sort(key=lambda row: -row[1])
    lines = [
        "event-loop thread CPU by callback, between the load test's first and last scrape, "
        f"ms per call-second (the process: {process:.2f}, of which the loop's thread "
        f"{thread:.2f}, other threads {process - thread:.2f})",
        f"  {'callback':<72} {'ms/call-s':>9} {'runs/call-s':>11}",
    ]
    shown = 0.0
    for name, ms, runs in rows[:30]:
        shown += ms
        lines.append(f"  {name[:72]:<72} {ms:9.3f} {runs:11.1f}")
    lines.append(f"  {'(the rest)':<72} {sum(r[1] for r in rows) - shown:9.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        sys.exit(serve_timed(*sys.argv[2:5]))
    logging.basicConfig(level=logging.ERROR)
    main()
