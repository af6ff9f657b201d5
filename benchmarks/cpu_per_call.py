"""Gateway CPU per call-second vs a stock aiortc echo, at several concurrencies.

Each point is a real load test: simulated WhatsApp callers (sandbox, recorded
speech from ../shared/audio) call a server process started for that point; the
server's own CPU time over its own call-seconds is read from its /metrics. The
stock baseline (benchmarks/stock_echo.py) runs in the same invocation, so the
ratio compares like with like on whatever machine this runs on.

    python benchmarks/cpu_per_call.py [--calls 10 20 40] [--duration 30]
        [--phases independent|shared]

``--phases shared`` is the load of the figures measured before the option (every
caller sending at the same instants); the load generator's own CPU per call-second
and wake-ups a second (``gen``) show what the phases cost it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from echo_load import add_phases_option, run_echo_calls

HERE = Path(__file__).resolve().parent


async def measure(calls: int, duration: float, stock: bool, phases: str) -> dict[str, float]:
    report = await run_echo_calls(
        calls,
        duration,
        server_command=(sys.executable, str(HERE / "stock_echo.py")) if stock else None,
        phases=phases,
    )
    g = report["gateway"]
    p = report["packets"]
    gen = report["generator"]
    cpu = g["cpu_ms_per_call_second"] or float("nan")
    return {
        "cpu_ms": cpu,
        "cores": cpu * g["peak_active_calls"] / 1000,
        "clean": report["ended_cleanly"],
        "lost_late": 100 * (p["lost_or_late_ratio"] or 0.0),
        # The server's event-loop wake-ups (its main thread's sleeps), a second.
        "wakeups": g["wakeups_per_second"] or float("nan"),
        # The load generator's (this process's) CPU per call-second and wake-ups a second.
        "gen_ms": gen["cpu_ms_per_call_second"] or float("nan"),
        "gen_wakeups": gen["wakeups_per_second"] or float("nan"),
    }


def saturated(r: dict[str, float]) -> bool:
    # A server that cannot keep up does less work per call-second, not more:
    # its figure then flatters it. Flag it instead of printing a ratio.
    return r["lost_late"] >= 1.0 or r["cores"] > 0.9


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--duration", type=float, default=30.0)
    add_phases_option(parser)
    args = parser.parse_args()
    print(
        "gateway CPU per call-second (echo bot, full pipeline) vs stock aiortc echo, "
        f"{args.duration:.0f} s calls with recorded speech, callers sending at "
        f"{args.phases} phases; ms of server CPU per second of call, cores used, % of "
        "frames late or lost, event-loop wake-ups a second; gen: the load generator's "
        "CPU ms per call-second and wake-ups a second (the gateway's run)"
    )
    print(
        f"{'calls':>5} | {'stock ms':>8} {'cores':>5} {'late%':>6} {'wake/s':>6} | "
        f"{'gateway ms':>10} {'cores':>5} {'late%':>6} {'wake/s':>6} {'clean':>7} | ratio"
        f" | {'gen ms':>6} {'wake/s':>6}"
    )
    for calls in args.calls:
        stock = await measure(calls, args.duration, True, args.phases)
        ours = await measure(calls, args.duration, False, args.phases)
        ratio = (
            "stock saturated" if saturated(stock) else f"{stock['cpu_ms'] / ours['cpu_ms']:.2f}x"
        )
        print(
            f"{calls:>5} | {stock['cpu_ms']:>8.1f} {stock['cores']:>5.2f} "
            f"{stock['lost_late']:>6.2f} {stock['wakeups']:>6.0f} | {ours['cpu_ms']:>10.1f} "
            f"{ours['cores']:>5.2f} {ours['lost_late']:>6.2f} {ours['wakeups']:>6.0f} "
            f"{int(ours['clean']):>3}/{calls:<3} | {ratio:<7} | {ours['gen_ms']:>6.1f} "
            f"{ours['gen_wakeups']:>6.0f}",
            flush=True,
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
