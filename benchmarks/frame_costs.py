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

    python benchmarks/frame_costs.py [--calls 10] [--duration 15]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
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
    ("gateway.pipeline.vad", "VadSegmenter", "push"),
    ("gateway.media.frameclock", "FrameClock", "_on_tick"),
    ("gateway.media.sender", "PlayoutSender", "_on_tick"),
    ("gateway.media.playout", "PlayoutTrack", "poll"),
    ("gateway.media.opus", "OpusEncoder", "encode"),
    ("gateway.media.transport", "CallTransport", "send_rtp_now"),
]


def serve_timed(out: str) -> int:
    """The gateway's ``serve`` with the functions above timed; the figures go to ``out``."""
    import importlib

    from gateway.cli import main

    clock = time.thread_time_ns
    samples: dict[str, list[int]] = {}

    def timed(function: Callable[..., Any], name: str) -> Callable[..., Any]:
        spent = samples.setdefault(name, [])

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                spent.append(clock() - start)

        return wrapper

    for module, cls, method in WRAPPED:
        owner = getattr(importlib.import_module(module), cls, None)
        if owner is not None and hasattr(owner, method):
            setattr(owner, method, timed(getattr(owner, method), f"{cls}.{method}"))

    def dump() -> None:
        empty = samples.setdefault("(one clock read)", [])
        for _ in range(10000):
            start = clock()
            empty.append(clock() - start)
        with open(out, "w") as f:
            json.dump(samples, f)

    atexit.register(dump)
    return main(["serve"])


async def load(calls: int, duration: float, out: str) -> dict[str, Any]:
    from echo_load import run_echo_calls

    command = (sys.executable, str(HERE), "--serve", out)
    return await run_echo_calls(calls, duration, server_command=command)


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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "samples.json")
        report = asyncio.run(load(args.calls, args.duration, out))
        with open(out) as f:
            samples = json.load(f)
    gateway = report["gateway"]
    frames = 50 * gateway["call_seconds"]
    print(
        f"thread CPU per call of the per-frame functions inside the gateway, echo bot, "
        f"{args.calls} calls of {args.duration:.0f} s ({gateway['call_seconds']:.0f} "
        f"call-seconds); the whole process: {gateway['cpu_ms_per_call_second']:.1f} ms "
        f"per call-second = {1000 * gateway['cpu_ms_per_call_second'] / 50:.0f} us per "
        f"inbound frame (timed, so a little above an untimed run)"
    )
    print(table(samples, frames))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        sys.exit(serve_timed(sys.argv[2]))
    logging.basicConfig(level=logging.ERROR)
    main()
