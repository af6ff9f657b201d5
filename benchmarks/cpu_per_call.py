"""Gateway CPU per call-second vs a stock aiortc echo (and Pipecat), at several concurrencies.

Each point is a real load test: simulated WhatsApp callers (sandbox, recorded
speech from ../shared/audio) call a server process started for that point; the
server's own CPU time over its own call-seconds is read from its /metrics. The
stock baseline (benchmarks/stock_echo.py) runs in the same invocation, so the
ratio compares like with like on whatever machine this runs on.

``--pipecat`` adds the issue's yardstick: Pipecat 1.14's WhatsApp transport with an
echo bot and its Silero VAD (benchmarks/pipecat/server.py, run by the Pipecat
virtualenv's python: ``make pipecat-env``), under the same load, each server a fresh
process, one after the other; ``--rounds`` repeats the set in alternating order.

    python benchmarks/cpu_per_call.py [--calls 10 20 40] [--duration 30]
        [--phases independent|shared] [--pipecat [--pipecat-echo utterance|frames]]
        [--rounds N]

``--phases shared`` is the load of the figures measured before the option (every
caller sending at the same instants); the load generator's own CPU per call-second
and wake-ups a second (``gen``) show what the phases cost it. ``heard`` is the share
of the callers' recorded speech that came back as sound (did the server echo?).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from echo_load import add_phases_option, run_echo_calls

HERE = Path(__file__).resolve().parent
PIPECAT_PYTHON = HERE.parent / ".venv-pipecat" / "bin" / "python"
STOCK = "stock"
PIPECAT = "pipecat"
GATEWAY = "gateway"


def server(kind: str, pipecat_echo: str) -> dict[str, object]:
    """The load test's settings that start ``kind`` of server instead of the gateway."""
    if kind == STOCK:
        return {"server_command": (sys.executable, str(HERE / "stock_echo.py"))}
    if kind == PIPECAT:
        return {
            "server_command": (str(PIPECAT_PYTHON), str(HERE / "pipecat" / "server.py")),
            # Pipecat warns on every call of the video tracks and data channel a WhatsApp
            # call never has; its errors still show.
            "gateway_env": {
                "PIPECAT_ECHO": pipecat_echo,
                "LOGURU_LEVEL": "ERROR",
                "PYTHONPATH": str(HERE),  # for baseline_server
            },
        }
    return {}


async def measure(
    calls: int, duration: float, kind: str, phases: str, echo: str
) -> dict[str, float]:
    report = await run_echo_calls(calls, duration, phases=phases, **server(kind, echo))
    g = report["gateway"]
    p = report["packets"]
    gen = report["generator"]
    cpu = g["cpu_ms_per_call_second"] or float("nan")
    return {
        "cpu_ms": cpu,
        "cores": cpu * g["peak_active_calls"] / 1000,
        "clean": report["ended_cleanly"],
        "lost_late": 100 * (p["lost_or_late_ratio"] or 0.0),
        "heard": p["heard_back_ratio"] or 0.0,
        "rss_mib": g["rss_bytes_peak"] / 2**20,
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


def ratio(base: dict[str, float], ours: dict[str, float]) -> str:
    """``base``'s CPU over the gateway's, unless ``base`` saturated or did not echo."""
    if saturated(base):
        return "saturated"
    # A server that echoes less also works less: its figure would flatter it too.
    if base["heard"] < 0.5 * ours["heard"]:
        return "no echo"
    return f"{base['cpu_ms'] / ours['cpu_ms']:.2f}x"


def cells(r: dict[str, float]) -> str:
    return (
        f"{r['cpu_ms']:>7.1f} {r['cores']:>5.2f} {r['lost_late']:>6.2f} {r['heard']:>5.2f} "
        f"{r['wakeups']:>6.0f} {r['rss_mib']:>5.0f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--duration", type=float, default=30.0)
    add_phases_option(parser)
    parser.add_argument(
        "--pipecat",
        action="store_true",
        help="also measure Pipecat 1.14's WhatsApp transport + echo (make pipecat-env first)",
    )
    parser.add_argument(
        "--pipecat-echo",
        choices=("utterance", "frames"),
        default="utterance",
        help="Pipecat's bot: each utterance back after its Silero VAD ends it, as the "
        "gateway's echo bot (default), or every frame straight back, no VAD",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every point, the servers in alternating order"
    )
    args = parser.parse_args()
    if args.pipecat and not PIPECAT_PYTHON.exists():
        parser.error(f"{PIPECAT_PYTHON} is missing: run `make pipecat-env` first")
    kinds = [STOCK, PIPECAT, GATEWAY] if args.pipecat else [STOCK, GATEWAY]
    print(
        "server CPU per call-second, echo bot (the gateway's full pipeline with VAD"
        + (f"; Pipecat's {args.pipecat_echo} echo" if args.pipecat else "")
        + f") vs stock aiortc echo, {args.duration:.0f} s calls with recorded speech, "
        f"callers sending at {args.phases} phases; ms of server CPU per second of call, "
        "cores used, % of frames late or lost, share of the speech heard back, event-loop "
        "wake-ups a second, peak RSS MiB; ratios: the baseline's ms over the gateway's; "
        "gen: the load generator's CPU ms per call-second and wake-ups a second (the "
        "gateway's run)"
    )
    block = f"{'ms':>7} {'cores':>5} {'late%':>6} {'heard':>5} {'wake/s':>6} {'MiB':>5}"
    head = f"{'round':>5} {'calls':>5} | " + " | ".join(f"{k:<{len(block)}}" for k in kinds)
    print(head)
    print(
        f"{'':>11} | "
        + " | ".join(block for _ in kinds)
        + f" {'clean':>7} | stock/gw"
        + (" | pipecat/gw" if args.pipecat else "")
        + f" | {'gen ms':>6} {'wake/s':>6}"
    )
    for round_ in range(1, args.rounds + 1):
        order = kinds if round_ % 2 else kinds[::-1]
        for calls in args.calls:
            r = {
                k: await measure(calls, args.duration, k, args.phases, args.pipecat_echo)
                for k in order
            }
            ours = r[GATEWAY]
            line = f"{round_:>5} {calls:>5} | " + " | ".join(cells(r[k]) for k in kinds)
            line += f" {int(ours['clean']):>3}/{calls:<3} | {ratio(r[STOCK], ours):<8}"
            if args.pipecat:
                line += f" | {ratio(r[PIPECAT], ours):<10}"
            line += f" | {ours['gen_ms']:>6.1f} {ours['gen_wakeups']:>6.0f}"
            print(line, flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
