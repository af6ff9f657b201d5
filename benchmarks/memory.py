"""Resident memory of a gateway at rest and with N echo calls up, beside a stock aiortc echo.

Each server is a fresh process started for the run (the gateway with the echo
bot, VAD on; the stock echo from benchmarks/stock_echo.py). RSS is read from
its /metrics: once before the first call, then every second while simulated
callers (recordings from ../shared/audio) talk to it, and once a second after
the last caller hung up; the peak is the goal's figure (issue 14: <= 90 MB with
10 echo calls up). "per call" is (peak - at rest) / calls.

RSS is private memory (RssAnon: heap, Python objects) plus the pages of mapped
files (RssFile: the shared libraries' code), and the second varies by several
MiB from run to run with what the page cache holds (the kernel maps cached
neighbours of a faulted page). So the peak is also split into anon and file,
read from /proc/<pid>/status of the server process: compare anon across runs.

    python benchmarks/memory.py [--calls 10] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from echo_load import run_echo_calls

HERE = Path(__file__).resolve().parent
MIB = 2**20


def _server_pid() -> int | None:
    # The server is this process's only child.
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                        return int(entry)
            except (OSError, ValueError, IndexError):
                continue
    return None


def _status_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {
            key: int(value.split()[0])
            for key, _, value in (line.partition(":") for line in f)
            if key in ("VmRSS", "RssAnon", "RssFile")
        }


async def _split_at_peak(peak: dict[str, int]) -> None:
    # Until cancelled: RssAnon and RssFile when VmRSS was highest.
    while True:
        await asyncio.sleep(0.25)
        pid = _server_pid()
        if pid is None:
            continue
        try:
            now = _status_kib(pid)
        except (OSError, ValueError):
            continue
        if now.get("VmRSS", 0) > peak.get("VmRSS", 0):
            peak.update(now)


async def measure(calls: int, duration: float, stock: bool) -> dict[str, float]:
    peak: dict[str, int] = {}
    sampler = asyncio.create_task(_split_at_peak(peak))
    try:
        report = await _load(calls, duration, stock)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    g = report["gateway"]
    return {
        "start": (g["rss_bytes_at_start"] or 0) / MIB,
        "peak": g["rss_bytes_peak"] / MIB,
        "anon": peak.get("RssAnon", 0) / 1024,
        "file": peak.get("RssFile", 0) / 1024,
        "end": (g["rss_bytes_at_end"] or 0) / MIB,
        "calls": g["peak_active_calls"],
        "clean": report["ended_cleanly"],
    }


async def _load(calls: int, duration: float, stock: bool) -> dict[str, Any]:
    return await run_echo_calls(
        calls,
        duration,
        server_command=(sys.executable, str(HERE / "stock_echo.py")) if stock else None,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    print(f"resident memory (MiB), echo, {args.calls} calls of {args.duration:.0f} s")
    print(
        f"{'server':<24} {'at rest':>8} {'peak':>8} {'(anon':>6} {'file)':>6} "
        f"{'per call':>9} {'after':>8} {'calls':>6}"
    )
    for name, stock in (("stock aiortc echo", True), ("gateway (echo bot, VAD)", False)):
        r = await measure(args.calls, args.duration, stock)
        per_call = (r["peak"] - r["start"]) / r["calls"] if r["calls"] else float("nan")
        print(
            f"{name:<24} {r['start']:>8.1f} {r['peak']:>8.1f} {r['anon']:>6.1f} {r['file']:>6.1f} "
            f"{per_call:>9.2f} "
            f"{r['end']:>8.1f} {int(r['calls']):>3}/{args.calls:<3}",
            flush=True,
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
