"""What one call costs the gateway to set up and tear down, outside its media.

A gateway process (``gateway serve``, echo bot, SQLite store) answers calls from
simulated WhatsApp users (the sandbox, in this process, on loopback), one after
the other: the connect webhook, the answer (``pre_accept`` and ``accept`` to the
fake Graph API), ICE and DTLS up, then the user hangs up at once (the terminate
webhook) and the gateway closes the call. What the gateway spent is read from
``/proc`` (process CPU, every thread), minus what it spends at rest over the same
wall time (measured before, over an idle window), per call.

A second round of the same calls runs under cProfile (process CPU clock, the
event loop's thread only), switched on and off in the gateway by a signal, so
start-up is not in it, and prints the functions that cost the most per call,
by cumulative and by self time (cProfile's overhead is in these: compare rows,
not totals). Nothing else scrapes the gateway meanwhile (no ``/metrics``).

    python benchmarks/call_setup.py [--calls 30] [--top 25] [--no-profile] [--keep FILE]
    python benchmarks/call_setup.py --base main [--rounds 3] [--calls 30]

``--base REV`` measures that revision (exported as ``cpu_ab.py`` does) and this
checkout, one after the other, round by round, without profiles.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import os
import pstats
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
TICKS = os.sysconf("SC_CLK_TCK")


def serve(stats_path: str, tree: str | None) -> int:
    """The gateway's ``serve`` (imported from ``tree`` if given); SIGUSR1 starts the
    profiler, SIGUSR2 stops it and dumps."""
    if tree:
        sys.path.insert(0, tree)
    from gateway.cli import main

    profiler = cProfile.Profile(time.process_time)

    def start(*_: object) -> None:
        profiler.enable()

    def stop(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(stats_path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return main(["serve"])


def process_cpu(pid: int) -> float:
    """Seconds of CPU the process has spent (user + system, every thread, living or not)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def one_call(sandbox: object, i: int) -> None:
    from gateway.sandbox.user import SimulatedUser

    user = SimulatedUser(sandbox, f"1555{i:07d}", f"Caller {i}")  # type: ignore[arg-type]
    call = await user.place_call(inbound=False)
    try:
        async with asyncio.timeout(20):
            await call.accepted.wait()
            await call.media_up.wait()
        await call.hang_up()
    finally:
        await call.close()
        sandbox.users.pop(user.wa_id, None)  # type: ignore[attr-defined]


async def calls_round(sandbox: object, pid: int, first: int, calls: int) -> tuple[float, float]:
    """Run ``calls`` calls one after the other; (gateway CPU s, wall s), teardown included."""
    cpu, wall = process_cpu(pid), time.perf_counter()
    for i in range(first, first + calls):
        await one_call(sandbox, i)
    await asyncio.sleep(1.0)  # the last call's teardown (the idle rate is subtracted)
    return process_cpu(pid) - cpu, time.perf_counter() - wall


def table(stats_path: str, calls: int, top: int) -> str:
    stats = pstats.Stats(stats_path)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    out = io.StringIO()
    print(
        f"cProfile of the event loop's thread, {calls} calls: {1000 * total / calls:.1f} ms "
        "of profiled CPU per call (cProfile's overhead included)",
        file=out,
    )
    for title, column in (("cumulative", 3), ("self", 2)):
        print(f"\n{'ms/call':>8} {'calls/call':>10}  function ({title} time)", file=out)
        rows = sorted(entries.items(), key=lambda kv: -kv[1][column])[:top]
        for (path, line, name), (_, ncalls, tottime, cumtime, _) in rows:
            where = name if path == "~" else f"{name}  {_short(path)}:{line}"
            spent = cumtime if column == 3 else tottime
            print(f"{1000 * spent / calls:8.3f} {ncalls / calls:10.1f}  {where}", file=out)
    return out.getvalue()


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/gateway/" in path:
        return "gateway/" + path.split("/gateway/", 1)[1]
    return path


async def measure(args: argparse.Namespace, tree: str | None, profile: bool) -> tuple[float, str]:
    """One gateway (this checkout, or the one exported to ``tree``): its CPU per call
    (ms, at rest subtracted) and, with ``profile``, the profile's table."""
    from gateway import rtc
    from gateway.loadtest.target import start_local_gateway
    from gateway.sandbox.cloud import CloudAPISandbox

    rtc.configure(["127.0.0.1"])
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = args.keep or str(Path(tmp) / "gateway.prof")
        sandbox = CloudAPISandbox(webhook_url="", app_secret="", access_token="")
        await sandbox.start()
        gateway = await start_local_gateway(
            sandbox.graph_url,
            bot="echo",
            max_calls=20,
            command=(sys.executable, str(HERE), "--serve", stats_path, *([tree] if tree else [])),
        )
        assert gateway.process is not None
        pid = gateway.process.pid
        sandbox.app_secret, sandbox.access_token = gateway.app_secret, gateway.access_token
        sandbox.webhook_url = f"{gateway.url}/webhook"
        try:
            for i in range(3):  # warm-up: first-use imports, caches, the certificate
                await one_call(sandbox, 9_000_000 + i)
            await asyncio.sleep(1.0)
            idle_cpu, idle_wall = process_cpu(pid), time.perf_counter()
            await asyncio.sleep(args.idle)
            idle_rate = (process_cpu(pid) - idle_cpu) / (time.perf_counter() - idle_wall)
            cpu, wall = await calls_round(sandbox, pid, 0, args.calls)
            table_text = ""
            if profile:
                gateway.process.send_signal(signal.SIGUSR1)
                await asyncio.sleep(0.2)
                await calls_round(sandbox, pid, 1_000_000, args.calls)
                gateway.process.send_signal(signal.SIGUSR2)
                await asyncio.sleep(2.0)  # the dump is written
                table_text = table(stats_path, args.calls, args.top)
        finally:
            await sandbox.aclose()
            await gateway.stop()
    print(
        f"  {(tree and 'base') or 'this'}: {1000 * cpu / args.calls:6.2f} ms/call in all "
        f"({wall / args.calls:.2f} s/call), at rest {1000 * idle_rate:.2f} ms/s",
        flush=True,
    )
    return 1000 * (cpu - idle_rate * wall) / args.calls, table_text


async def main(args: argparse.Namespace) -> None:
    print(
        f"gateway CPU per call, set-up and teardown ({args.calls} calls one after the other, "
        "echo bot, hung up as soon as media is up; the gateway's CPU at rest subtracted)",
        flush=True,
    )
    if args.base is None:
        net, profile = await measure(args, None, not args.no_profile)
        print(f"per call: {net:.2f} ms")
        if profile:
            print()
            print(profile)
        return
    from cpu_ab import export

    with tempfile.TemporaryDirectory() as tmp:
        commit = export(args.base, Path(tmp))
        print(f"base {args.base} ({commit}) vs this checkout, {args.rounds} rounds", flush=True)
        base, this = [], []
        for r in range(args.rounds):
            base.append((await measure(args, tmp, False))[0])
            this.append((await measure(args, None, False))[0])
            print(f"round {r + 1}: base {base[-1]:6.2f}  this {this[-1]:6.2f} ms/call", flush=True)
    b, t = statistics.median(base), statistics.median(this)
    print(f"median:  base {b:6.2f}  this {t:6.2f} ms/call   this/base {t / b:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--idle", type=float, default=5.0, help="idle window, seconds")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", help="also keep the cProfile stats in this file")
    parser.add_argument("--base", help="also measure this git revision, side by side")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of base, this (--base)")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile round")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(arguments))
