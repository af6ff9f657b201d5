"""CPU cost of call recording: gateway CPU per call-second with recording off and on.

All in CPU time (not wall time), so the figures survive a loaded machine:

1. Real load tests (sandbox callers speaking ../shared/audio to the echo bot),
   alternating off / on so machine drift hits both alike; the gateway's own CPU
   per call-second from /metrics. On a shared machine one round varies by tens of
   percent, more than the effect, so the cost is also measured by its parts:
2. the per-packet tap (the one statement recording adds to the media path),
   timed in a loop, for 100 packets per call-second (50 each way, all speech);
3. writing the Ogg file at call end (worker thread), run here on a minute of
   real packets both ways, timed with process_time.

    python benchmarks/recording_cpu.py [--calls 10] [--duration 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import timeit
from pathlib import Path

from echo_load import AUDIO, add_phases_option, run_echo_calls, use_phases

from gateway.loadtest.recordings import load_recordings
from gateway.recording import CallRecording
from gateway.recording.call import NTP_UNIX_OFFSET_MS


async def load_test_cpu(calls: int, duration: float, record_dir: str | None) -> float:
    report = await run_echo_calls(
        calls,
        duration,
        gateway_env={"GATEWAY_RECORDINGS_DIR": record_dir} if record_dir else None,
    )
    if report["ended_cleanly"] != calls:
        # A saturated machine: the figure is still the gateway's CPU per call-second.
        print(f"  (only {report['ended_cleanly']}/{calls} calls ended cleanly)", flush=True)
    return float(report["gateway"]["cpu_ms_per_call_second"])


def write_cost_ms_per_call_second(seconds: float = 60.0, repeats: int = 5) -> float:
    """CPU ms to write one call-second of recording (both sides talking all the time)."""
    recordings, _ = load_recordings([AUDIO])
    packets = [p for r in recordings for p in r.packets]
    count = int(seconds * 50)
    costs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            rec = CallRecording("wacid.bench", Path(tmp) / "bench.ogg", loop_clock=lambda: 0.0)
            start_ms = int(rec.started_wall * 1000) + NTP_UNIX_OFFSET_MS
            for i in range(count):
                payload = packets[i % len(packets)]
                rec.caller.append((start_ms + 20 * i, 960 * i, payload))
                rec.bot.append((960 * i, payload))
            rec.stop(bot_start_loop=0.0)
            rec.ended_wall = rec.started_wall + seconds
            before = time.process_time()
            rec.write()
            costs.append((time.process_time() - before) * 1000 / seconds)
    return statistics.median(costs)


def tap_ns_per_packet(count: int = 200_000, repeats: int = 7) -> float:
    """What the tap adds per packet: the tap statement on, less the same check off."""
    setup = "payload = bytes(60); arrival, ts = 3_950_000_000_000, 123456"
    on = "if tap is not None: tap.append((arrival, ts, payload))"
    best = {}
    for name, tap in (("off", None), ("on", [])):
        runs = []
        for _ in range(repeats):
            if tap is not None:
                tap.clear()
            timer = timeit.Timer(on, setup, timer=time.process_time, globals={"tap": tap})
            runs.append(timer.timeit(count) / count * 1e9)
        best[name] = min(runs)
    return max(0.0, best["on"] - best["off"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    add_phases_option(parser)
    args = parser.parse_args()
    use_phases(args.phases)
    print(
        f"gateway CPU per call-second, echo bot, {args.calls} calls of {args.duration:.0f} s "
        "with recorded speech (ms of gateway CPU per second of call)"
    )
    print(f"{'round':>5} | {'off ms':>7} | {'on ms':>7} | on/off")
    off, on = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            off.append(await load_test_cpu(args.calls, args.duration, None))
            on.append(await load_test_cpu(args.calls, args.duration, f"{tmp}/round{r}"))
            print(f"{r + 1:>5} | {off[-1]:>7.2f} | {on[-1]:>7.2f} | {on[-1] / off[-1]:.3f}")
    base, tapped = statistics.mean(off), statistics.mean(on)
    print(f" mean | {base:>7.2f} | {tapped:>7.2f} | {tapped / base:.3f}")
    tap_ms = tap_ns_per_packet() * 100 / 1e6
    write = write_cost_ms_per_call_second()
    total = tap_ms + write
    print("recording's cost by its parts (ms of CPU per call-second):")
    print(f"  packet taps, 100 packets/s: {tap_ms:.4f}")
    print(f"  Ogg file at call end:       {write:.3f} (worker thread)")
    print(
        f"  total:                      {total:.3f} = {100 * total / base:.1f} % of the "
        f"gateway's {base:.1f} ms per call-second with recording off (goal <= 5 %)"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
