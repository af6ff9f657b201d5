"""Calls per core: the largest concurrency with under 1% of frames late or lost.

Steps up the number of simultaneous echo-bot calls (simulated WhatsApp users
speaking recordings from ../shared/audio) against a local gateway process and
prints, per step, what the callers and the gateway measured. Stops at the first
step over the limit (with ``--base REV``, once both sides went over). The gateway
is pinned to one core and the load generator (this process: sandbox and callers)
to another (``os.sched_setaffinity``), so the figure is calls per core of the
gateway, and the generator's own CPU does not compete with it; read the
gateway's CPU column (cores) to see that it was the gateway that saturated (the
generator's cores are its average over the step, ramp and teardown included).
``--no-pin`` leaves both free to use any core.

``--base REV`` runs each step against that git revision's gateway too (exported
as ``cpu_ab.py`` does), right before this checkout's, with the same load generator
(this checkout's): side by side, so drift on a shared machine hits both alike.

A frame is late when it arrives (the kernel's stamp at the caller) more than 60 ms
after its RTP time says, against the call's best; ``late@read`` is the same count
taken when the generator's event loop read it, its own queueing included.

    python benchmarks/capacity.py [--steps 50 100 150 200] [--duration 20] [--no-pin]
        [--phases independent|shared] [--base REV]

``--phases shared``: every caller sends at the same instants (the load of the figures
measured before the option; default: each at a phase of its own, as phones do).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cpu_ab import export, server_from
from echo_load import add_phases_option

from gateway.loadtest import LoadTestConfig, run_load_test

AUDIO = str(Path(__file__).resolve().parent.parent.parent / "shared" / "audio")
LIMIT = 0.01


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100, 150, 200])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20.0, help="calls started per second")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to cores")
    add_phases_option(parser)
    parser.add_argument("--base", help="git revision to run each step against too")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cores) >= 2
    gateway_cpus, generator_cpus = ((cores[0],), (cores[1],)) if pin else (None, None)
    with tempfile.TemporaryDirectory() as tmp:
        sides: list[tuple[str, str | None]] = [("this", None)]
        if args.base:
            sides.insert(0, (export(args.base, Path(tmp)), tmp))
        print(
            "largest concurrency with < 1% of received frames late (> 60 ms) or lost, echo "
            f"bot, {args.duration:.0f} s calls, callers at {args.phases} phases; setup and "
            "response times in ms (p50/p99); "
            + (
                f"gateway pinned to core {cores[0]}, load generator to core {cores[1]}"
                if pin
                else "not pinned"
            )
            + f"; load average {os.getloadavg()[0]:.2f} at the start"
        )
        print(
            f"{'gateway':>7} {'calls':>5} {'clean':>7} {'late+lost %':>11} {'late@read %':>11} "
            f"{'setup media':>12} {'response':>12} {'barge-in':>10} {'gw CPU ms/s':>11} "
            f"{'gw cores':>8} {'lag p99':>8} {'gen cores':>9} {'load':>5}"
        )
        best = {label: 0 for label, _ in sides}
        over: set[str] = set()
        for calls in args.steps:
            for label, tree in sides:
                if label in over:
                    continue
                ok = await step(label, tree, calls, args, gateway_cpus, generator_cpus)
                if ok:
                    best[label] = calls
                else:
                    over.add(label)
            if len(over) == len(sides):
                break
    where = "on one gateway core" if pin else "(not pinned)"
    for label, calls in best.items():
        name = "this checkout" if label == "this" else label
        print(f"largest step under 1% late or lost, {name}: {calls} concurrent calls {where}")


async def step(
    label: str,
    tree: str | None,
    calls: int,
    args: Any,
    gateway_cpus: tuple[int, ...] | None,
    generator_cpus: tuple[int, ...] | None,
) -> bool:
    """One load step against one side's gateway; prints its row, True if under the limit."""
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    report = await run_load_test(
        LoadTestConfig(
            calls=calls,
            rate=args.rate,
            duration=args.duration,
            audio=[AUDIO],
            progress=False,
            server_command=server_from(tree) if tree else None,
            gateway_cpus=gateway_cpus,
            generator_cpus=generator_cpus,
            phases=args.phases,
        )
    )
    generator = (time.process_time() - cpu_before) / (time.perf_counter() - wall_before)
    m, p, g = report["metrics_ms"], report["packets"], report["gateway"]
    ratio = p["lost_or_late_ratio"] or 0.0
    at_read = (p["lost"] + p["late_at_read"]) / p["received"] if p["received"] else 0.0
    cpu = g["cpu_ms_per_call_second"] or 0.0
    print(
        f"{label:>7} {calls:>5} {report['ended_cleanly']:>3}/{calls:<3} {100 * ratio:>11.2f} "
        f"{100 * at_read:>11.2f} "
        f"{m['setup_media']['p50'] or 0:>5.0f}/{m['setup_media']['p99'] or 0:<6.0f} "
        f"{m['response']['p50'] or 0:>5.0f}/{m['response']['p99'] or 0:<6.0f} "
        f"{m['barge_in_stop']['p50'] or 0:>10.0f} {cpu:>11.1f} "
        f"{cpu * g['peak_active_calls'] / 1000:>8.2f} {g['loop_lag_p99_ms_max']:>8.1f}"
        f" {generator:>9.2f} {os.getloadavg()[0]:>5.2f}",
        flush=True,
    )
    return bool(ratio < LIMIT and report["ended_cleanly"] == calls)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
