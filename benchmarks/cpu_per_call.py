"""Gateway CPU per call-second vs a stock aiortc echo, at several concurrencies.

Each point is a real load test: simulated WhatsApp callers (sandbox, recorded
speech from ../shared/audio) call a server process started for that point; the
server's own CPU time over its own call-seconds is read from its /metrics. The
stock baseline (benchmarks/stock_echo.py) runs in the same invocation, so the
ratio compares like with like on whatever machine this runs on.

    python benchmarks/cpu_per_call.py [--calls 10 20 40] [--duration 30]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from gateway.sandbox.loadtest import LoadTestConfig, run_load_test

HERE = Path(__file__).resolve().parent
AUDIO = str(HERE.parent.parent / "shared" / "audio")


async def measure(calls: int, duration: float, stock: bool) -> dict[str, float]:
    config = LoadTestConfig(
        calls=calls,
        rate=10,
        duration=duration,
        audio=[AUDIO],
        bot="echo",
        progress=False,
        server_command=(sys.executable, str(HERE / "stock_echo.py")) if stock else None,
    )
    report = await run_load_test(config)
    g = report["gateway"]
    p = report["packets"]
    return {
        "cpu_ms": g["cpu_ms_per_call_second"] or float("nan"),
        "clean": report["ended_cleanly"],
        "lost_late": 100 * (p["lost_or_late_ratio"] or 0.0),
        "lag_ms": g.get("loop_lag_p99_ms_max", 0.0),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    print(
        "gateway CPU per call-second (echo bot, full pipeline) vs stock aiortc echo, "
        f"{args.duration:.0f} s calls with recorded speech; ms of server CPU per second of call"
    )
    print(
        f"{'calls':>5} {'stock ms':>9} {'gateway ms':>11} {'ratio':>6} "
        f"{'clean':>7} {'lost/late %':>12}"
    )
    for calls in args.calls:
        stock = await measure(calls, args.duration, stock=True)
        ours = await measure(calls, args.duration, stock=False)
        ratio = stock["cpu_ms"] / ours["cpu_ms"]
        print(
            f"{calls:>5} {stock['cpu_ms']:>9.1f} {ours['cpu_ms']:>11.1f} {ratio:>5.2f}x "
            f"{int(ours['clean']):>3}/{calls:<3} {ours['lost_late']:>11.2f}",
            flush=True,
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
