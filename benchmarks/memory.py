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

With --map, the gateway's memory is also attributed per mapping (benchmarks/smaps.py):
libraries, malloc arenas, thread stacks, pymalloc arenas; at rest (a gateway
started for that, 2 s after it answers /healthz) and at the peak of the run.

    python benchmarks/memory.py [--calls 10] [--duration 20] [--map]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import smaps
from echo_load import add_phases_option, run_echo_calls, use_phases

from gateway.loadtest import start_local_gateway

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


async def _split_at_peak(peak: dict[str, int], at_peak: Counter[str] | None) -> None:
    # Until cancelled: RssAnon and RssFile when VmRSS was highest (and the map then).
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
            if at_peak is not None:
                try:
                    mapped = smaps.attribute(pid)
                except OSError:
                    continue
                at_peak.clear()
                at_peak.update(mapped)
                at_peak["threads"] = smaps.threads(pid)


async def rest_map() -> Counter[str]:
    """The map of a gateway (echo bot) at rest: started, answering, no call yet."""
    gateway = await start_local_gateway("http://127.0.0.1:9", bot="echo", max_calls=20)
    try:
        await asyncio.sleep(2)
        assert gateway.process is not None
        mapped = smaps.attribute(gateway.process.pid)
        mapped["threads"] = smaps.threads(gateway.process.pid)
        return mapped
    finally:
        await gateway.stop()


async def measure(
    calls: int,
    duration: float,
    stock: bool,
    at_peak: Counter[str] | None = None,
    server: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """One fresh server under the load: its RSS figures (MiB). ``server`` is the command
    of a gateway other than this checkout's (``memory_ab.py``'s base)."""
    peak: dict[str, int] = {}
    sampler = asyncio.create_task(_split_at_peak(peak, at_peak))
    try:
        report = await _load(calls, duration, stock, server)
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


async def _load(
    calls: int, duration: float, stock: bool, server: tuple[str, ...] | None
) -> dict[str, Any]:
    return await run_echo_calls(
        calls,
        duration,
        server_command=(sys.executable, str(HERE / "stock_echo.py")) if stock else server,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--map", action="store_true", help="attribute the gateway's RSS")
    parser.add_argument("--no-stock", action="store_true", help="measure the gateway only")
    add_phases_option(parser)
    args = parser.parse_args()
    use_phases(args.phases)
    print(f"resident memory (MiB), echo, {args.calls} calls of {args.duration:.0f} s")
    print(
        f"{'server':<24} {'at rest':>8} {'peak':>8} {'(anon':>6} {'file)':>6} "
        f"{'per call':>9} {'after':>8} {'calls':>6}"
    )
    servers = [("gateway (echo bot, VAD)", False)]
    if not args.no_stock:
        servers.insert(0, ("stock aiortc echo", True))
    at_peak: Counter[str] = Counter()
    for name, stock in servers:
        r = await measure(args.calls, args.duration, stock, None if stock else at_peak)
        per_call = (r["peak"] - r["start"]) / r["calls"] if r["calls"] else float("nan")
        print(
            f"{name:<24} {r['start']:>8.1f} {r['peak']:>8.1f} {r['anon']:>6.1f} {r['file']:>6.1f} "
            f"{per_call:>9.2f} "
            f"{r['end']:>8.1f} {int(r['calls']):>3}/{args.calls:<3}",
            flush=True,
        )
    if args.map:
        at_rest = await rest_map()
        print("\ngateway's resident memory by mapping (MiB), at rest and at the peak")
        print(f"threads: {at_rest.pop('threads')} at rest, {at_peak.pop('threads', 0)} at the peak")
        smaps.print_table(
            {
                "at rest": at_rest,
                "peak": at_peak,
                "per call": _per_call(at_rest, at_peak, args.calls),
            }
        )


def _per_call(rest: Counter[str], peak: Counter[str], calls: int) -> Counter[str]:
    return Counter({k: (peak[k] - rest[k]) // max(calls, 1) for k in rest.keys() | peak.keys()})


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
