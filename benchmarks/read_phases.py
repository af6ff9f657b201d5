"""Media read at the tick or at arrival, callers at shared or independent phases: CPU per call.

The echo load (simulated WhatsApp callers speaking ../shared/audio to the echo
bot, as in cpu_per_call.py) in the four combinations of how the gateway reads
its calls' media sockets (``GATEWAY_MEDIA_READ``: at the frame clock's tick, or
at each datagram's arrival) and when the callers send their 20 ms frames
(``shared``: all at the same instants, one burst per tick, the load of the
figures measured before the option; ``independent``: each at a phase of its
own, as phones do). Rounds run the four one after the other, so drift on a
shared machine hits all alike. Per run: the gateway's CPU per call-second and
its event loop's wake-ups a second; the load generator's (this process's) CPU
per call-second and wake-ups a second, what the phases cost it.

    python benchmarks/read_phases.py [--calls 10] [--duration 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
from typing import Any

from echo_load import run_echo_calls

from gateway.loadtest.phases import PHASE_MODES

READS = ("tick", "arrival")
Figures = tuple[float, float, float, float]


async def measure(calls: int, duration: float, phases: str, read: str) -> Figures:
    """(gateway ms per call-second, its wake-ups a second, the generator's ms, its wake-ups)."""
    report: dict[str, Any] = await run_echo_calls(
        calls, duration, phases=phases, gateway_env={"GATEWAY_MEDIA_READ": read}
    )
    if report["ended_cleanly"] != calls:
        print(f"  (only {report['ended_cleanly']}/{calls} calls ended cleanly)", flush=True)
    g, gen = report["gateway"], report["generator"]
    nan = float("nan")
    return (
        g["cpu_ms_per_call_second"] or nan,
        g["wakeups_per_second"] or nan,
        gen["cpu_ms_per_call_second"] or nan,
        gen["wakeups_per_second"] or nan,
    )


def line(label: str, f: Figures | tuple[str, ...]) -> str:
    """One row: the gateway's ms and wake-ups, the generator's (or the column heads)."""
    cells = [
        f"{v:>{w}}" if isinstance(v, str) else f"{v:>{w}.{p}f}"
        for v, (w, p) in zip(f, ((10, 2), (6, 0), (6, 2), (6, 0)), strict=True)
    ]
    return f"{label:<25} | {cells[0]} {cells[1]} | {cells[2]} {cells[3]}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(
        f"echo bot, {args.calls} calls of {args.duration:.0f} s; gateway: CPU ms per "
        "call-second and event-loop wake-ups a second; gen: the load generator's CPU ms per "
        "call-second and wake-ups a second"
    )
    print(line("round phases read", ("gateway ms", "wake/s", "gen ms", "wake/s")))
    runs: dict[tuple[str, str], list[Figures]] = {}
    for r in range(args.rounds):
        for phases in PHASE_MODES[::-1]:  # shared first: the figures of earlier rounds
            for read in READS:
                figures = await measure(args.calls, args.duration, phases, read)
                runs.setdefault((phases, read), []).append(figures)
                print(line(f"{r + 1:>5} {phases:<11} {read:<7}", figures), flush=True)
    print("medians, and arrival/tick of the gateway's CPU per call-second:")
    for phases in PHASE_MODES[::-1]:
        med = {
            read: tuple(statistics.median(f[i] for f in runs[(phases, read)]) for i in range(4))
            for read in READS
        }
        for read in READS:
            print(line(f"  med {phases:<11} {read:<7}", med[read]))  # type: ignore[arg-type]
        print(f"  {phases}: arrival/tick {med['arrival'][0] / med['tick'][0]:.3f}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
