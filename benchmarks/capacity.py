"""Largest concurrency with under 1% of frames late or lost, plus setup and response times.

Steps up the number of simultaneous echo-bot calls (simulated WhatsApp users
speaking recordings from ../shared/audio) against a local gateway process and
prints, per step, what the callers and the gateway measured. Stops at the first
step over the limit. The load generator runs on the same machine (2 cores
here), so its own CPU use caps what can be reached: read the gateway's CPU
column to see who saturated.

    python benchmarks/capacity.py [--steps 10 20 40 60 80] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from gateway.loadtest import LoadTestConfig, run_load_test

AUDIO = str(Path(__file__).resolve().parent.parent.parent / "shared" / "audio")
LIMIT = 0.01


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 60, 80])
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    print(
        "largest concurrency with < 1% of received frames late (> 60 ms) or lost, echo bot, "
        f"{args.duration:.0f} s calls; setup and response times in ms (p50/p99)"
    )
    print(
        f"{'calls':>5} {'clean':>7} {'late+lost %':>11} {'setup media':>12} "
        f"{'response':>12} {'barge-in':>10} {'gw CPU ms/s':>11} {'gw cores':>8} {'lag p99':>8}"
    )
    best = 0
    for calls in args.steps:
        report = await run_load_test(
            LoadTestConfig(
                calls=calls, rate=10, duration=args.duration, audio=[AUDIO], progress=False
            )
        )
        m, p, g = report["metrics_ms"], report["packets"], report["gateway"]
        ratio = p["lost_or_late_ratio"] or 0.0
        cpu = g["cpu_ms_per_call_second"] or 0.0
        ok = ratio < LIMIT and report["ended_cleanly"] == calls
        print(
            f"{calls:>5} {report['ended_cleanly']:>3}/{calls:<3} {100 * ratio:>11.2f} "
            f"{m['setup_media']['p50']:>5.0f}/{m['setup_media']['p99']:<6.0f} "
            f"{m['response']['p50']:>5.0f}/{m['response']['p99']:<6.0f} "
            f"{m['barge_in_stop']['p50'] or 0:>10.0f} {cpu:>11.1f} "
            f"{cpu * g['peak_active_calls'] / 1000:>8.2f} {g['loop_lag_p99_ms_max']:>8.1f}",
            flush=True,
        )
        if not ok:
            break
        best = calls
    print(f"largest step under 1% late or lost: {best} concurrent calls")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
