"""Where a gateway's CPU goes per call: a CPU-time profile under a real load test.

Runs the load tester (simulated WhatsApp callers speaking recordings from
../shared/audio to the echo bot) against a gateway process that profiles
itself: cProfile with the process CPU clock (not wall time, so the figures hold
on a shared machine), dumped when the load test stops it. Prints the functions
that spend the most CPU, in microseconds per inbound 20 ms frame (each call
receives 50 frames and sends 50 a second), and with ``--flame`` also records a
flame graph (SVG) with py-spy (pinned in the dev extra) in a second run
(sampling, no cProfile overhead).

    python benchmarks/profile_calls.py [--calls 10] [--duration 20] [--top 30]
        [--save docs/profile-echo.txt] [--flame docs/flame-echo.svg]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def serve_profiled(stats_path: str, flame: str | None) -> int:
    """The gateway's ``serve``, under cProfile (or watched by py-spy); stats on exit."""
    from gateway.cli import main

    if flame:
        spy = subprocess.Popen(
            [
                *(_py_spy(), "record", "--pid", str(os.getpid())),
                *("--rate", "250", "--nonblocking", "--format", "flamegraph", "-o", flame),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return main(["serve"])
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes the graph on Ctrl-C
            spy.wait(30)
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        return main(["serve"])
    finally:
        profiler.disable()
        profiler.dump_stats(stats_path)


def _py_spy() -> str:
    """The py-spy next to this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


async def load(calls: int, duration: float, command: tuple[str, ...]) -> dict[str, float]:
    from echo_load import run_echo_calls

    report = await run_echo_calls(calls, duration, server_command=command)
    g, p = report["gateway"], report["packets"]
    return {
        "cpu_ms": g["cpu_ms_per_call_second"] or 0.0,
        "call_seconds": g["call_seconds"],
        "lost_late": 100 * (p["lost_or_late_ratio"] or 0.0),
    }


def summary(stats_path: str, result: dict[str, float], top: int, calls: int) -> str:
    stats = pstats.Stats(stats_path)
    frames = 50 * result["call_seconds"]  # inbound 20 ms frames the gateway handled
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    rows = sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]
    out = io.StringIO()
    print(
        f"gateway CPU profile (cProfile, process CPU clock), echo bot, {calls} calls, "
        f"{result['call_seconds']:.0f} call-seconds, {result['lost_late']:.2f}% late/lost; "
        f"{1e6 * total / frames:.0f} us of profiled CPU per inbound frame in all "
        f"(cProfile's own overhead included: compare rows, not totals)",
        file=out,
    )
    print(f"{'us/frame':>9} {'calls/frame':>11}  function (self time)", file=out)
    for (path, line, name), (_, ncalls, tottime, _, _) in rows:
        where = name if path == "~" else f"{name}  {_short(path)}:{line}"
        print(f"{1e6 * tottime / frames:9.1f} {ncalls / frames:11.2f}  {where}", file=out)
    return out.getvalue()


def _short(path: str) -> str:
    for marker in ("site-packages/", "/gateway/", "/lib/python3"):
        if marker in path:
            return (
                path.split(marker, 1)[1]
                if marker != "/gateway/"
                else "gateway/" + path.split(marker, 1)[1]
            )
    return path


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = os.environ.get("PROFILE_KEEP") or str(Path(tmp) / "gateway.prof")
        command = (sys.executable, str(HERE), "--serve", stats_path)
        result = await load(args.calls, args.duration, command)
        table = summary(stats_path, result, args.top, args.calls)
    print(table)
    if args.save:
        with open(args.save, "w") as f:  # noqa: ASYNC230 (the run is over)
            f.write(table)
    if args.flame:
        await load(args.calls, args.duration, (*command[:2], "--serve", "-", "--flame", args.flame))
        print(f"flame graph: {args.flame}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        flame = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--flame" else None
        sys.exit(serve_profiled(sys.argv[2], flame))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--save", help="also write the table to this file")
    parser.add_argument("--flame", help="also record a py-spy flame graph (SVG) here")
    from echo_load import add_phases_option, use_phases

    add_phases_option(parser)
    arguments = parser.parse_args()
    use_phases(arguments.phases)
    if arguments.flame:
        arguments.flame = os.path.abspath(arguments.flame)
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(arguments))
