"""Resident memory of a gateway at rest and with N echo calls up, beside a stock aiortc echo.

Each server is a fresh process started for the run (the gateway with the echo
bot, VAD on; the stock echo from benchmarks/stock_echo.py). RSS is read from
its /metrics: once before the first call, then every second while simulated
callers (recordings from ../shared/audio) talk to it; the peak is printed.

    python benchmarks/memory.py [--calls 10] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from gateway.loadtest import LoadTestConfig, run_load_test

HERE = Path(__file__).resolve().parent
AUDIO = str(HERE.parent.parent / "shared" / "audio")
MIB = 2**20


async def measure(calls: int, duration: float, stock: bool) -> dict[str, float]:
    report = await run_load_test(
        LoadTestConfig(
            calls=calls,
            rate=10,
            duration=duration,
            audio=[AUDIO],
            bot="echo",
            progress=False,
            server_command=(sys.executable, str(HERE / "stock_echo.py")) if stock else None,
        )
    )
    g = report["gateway"]
    return {
        "start": (g["rss_bytes_at_start"] or 0) / MIB,
        "peak": g["rss_bytes_peak"] / MIB,
        "calls": g["peak_active_calls"],
        "clean": report["ended_cleanly"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    print(f"resident memory (MiB), echo, {args.calls} calls of {args.duration:.0f} s")
    print(f"{'server':<24} {'at rest':>8} {'peak':>8} {'per call':>9} {'calls':>6}")
    for name, stock in (("stock aiortc echo", True), ("gateway (echo bot, VAD)", False)):
        r = await measure(args.calls, args.duration, stock)
        per_call = (r["peak"] - r["start"]) / r["calls"] if r["calls"] else float("nan")
        print(
            f"{name:<24} {r['start']:>8.1f} {r['peak']:>8.1f} {per_call:>9.2f} "
            f"{int(r['calls']):>3}/{args.calls:<3}",
            flush=True,
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
