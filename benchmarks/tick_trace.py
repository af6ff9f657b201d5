"""Where the late or lost frames of a capacity step come from, second by second.

Runs one step of ``capacity.py`` (echo calls ramped at ``--rate``, gateway pinned
to one core and the load generator to the other) with the gateway's frame clock
traced: for every 20 ms tick, how late its timer ran, how long the socket reads
took and how long the whole tick (reads, the bots' frames, every call's send)
took; and every other event-loop callback that held the loop longer than
``--long`` ms, by name (a call's set-up: SDP, DTLS; the ``/metrics`` scrape; ...).
The callers record each frame they count late (> 60 ms after its RTP time says,
against the call's best) or lost, with its time, and the generator's own loop
lag (its 20 ms timer's lateness), so a late frame can be told from a busy
generator.

Prints a timeline (one row per ``--bucket`` seconds from the first call's start:
active calls, ticks and their lateness and length, long callbacks, frames late
and lost) and histograms of tick lateness and tick length in the ramp and in
steady state.

    python benchmarks/tick_trace.py [--calls 150] [--duration 20] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

AUDIO = str(HERE.parent.parent.parent / "shared" / "audio")


def serve_traced(out: str) -> int:
    """The gateway's ``serve`` with its frame clock and long loop callbacks traced to ``out``."""
    from frame_costs import callback_name

    from gateway.cli import main
    from gateway.media import tickread
    from gateway.media.frameclock import FrameClock

    clock = time.monotonic
    # due, ran, read seconds, tick seconds, subscribers, tick CPU seconds
    ticks: list[tuple[float, float, float, float, int, float]] = []
    long: list[tuple[float, float, str]] = []  # start, seconds, name
    read_spent = [0.0]
    threshold = float(os.environ.get("TICK_TRACE_LONG_MS", "5")) / 1000

    on_tick = FrameClock._on_tick

    def traced_tick(self: FrameClock) -> None:
        read_spent[0] = 0.0
        cpu = time.thread_time()
        on_tick(self)
        due, ran = self.ticked
        ticks.append(
            (
                due,
                ran,
                read_spent[0],
                clock() - ran,
                len(self._subscribers),
                time.thread_time() - cpu,
            )
        )

    reader_tick = tickread.TickReader._tick

    def traced_read(self: tickread.TickReader, now: float) -> None:
        start = clock()
        reader_tick(self, now)
        read_spent[0] = clock() - start

    FrameClock._on_tick = traced_tick  # type: ignore[method-assign]
    tickread.TickReader._tick = traced_read  # type: ignore[method-assign]
    rest = getattr(tickread.TickReader, "_read_rest", None)
    if rest is not None:  # the reads left for after the senders count as reading too

        def traced_rest(self: tickread.TickReader, now: float) -> None:
            start = clock()
            rest(self, now)
            read_spent[0] += clock() - start

        tickread.TickReader._read_rest = traced_rest  # type: ignore[method-assign]

    run_handle = asyncio.events.Handle._run

    def timed_run(handle: asyncio.Handle) -> None:
        start = clock()
        try:
            run_handle(handle)
        finally:
            spent = clock() - start
            if spent > threshold:
                long.append((start, spent, callback_name(handle._callback)))  # type: ignore[attr-defined]

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]

    def dump() -> None:
        with open(out, "w") as f:
            json.dump({"ticks": ticks, "long": long}, f)

    atexit.register(dump)
    return main(["serve"])


def _patch_callers(late: list[tuple[float, float]], lost: list[tuple[float, int]]) -> None:
    """Record each frame the callers count late (time, lateness) or lost (time, gap)."""
    from gateway.loadtest import callers

    push = callers._PacketCounter._push_audio

    def traced(self: Any, packet: Any) -> None:
        before_late = self.stats_.late_packets
        max_before = self.max_seq if self.first_seq is not None else None
        received_before = self.stats_.packets_received
        push(self, packet)
        now = time.monotonic()
        if self.stats_.late_packets != before_late:
            offset = self.arrival_ms / 1000 - packet.timestamp / 48000
            late.append((now, offset - (self.base_offset or 0.0)))
        if max_before is not None and received_before and self.max_seq > max_before + 1:
            lost.append((now, self.max_seq - max_before - 1))

    callers._PacketCounter._push_audio = traced  # type: ignore[method-assign]


async def _generator_lag(lags: list[tuple[float, float]]) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + 0.02
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        now = loop.time()
        lags.append((now, now - due))
        due = max(due + 0.02, now)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _histogram(title: str, values: list[float], edges: list[float]) -> str:
    counts = Counter()
    for v in values:
        for edge in edges:
            if v < edge:
                counts[edge] += 1
                break
        else:
            counts[float("inf")] += 1
    cells = []
    low = 0.0
    for edge in [*edges, float("inf")]:
        label = (
            f"{low * 1000:.0f}-{edge * 1000:.0f}" if edge != float("inf") else f">{low * 1000:.0f}"
        )
        cells.append(f"{label} ms: {counts[edge]}")
        low = edge
    return f"  {title} (n={len(values)}): " + ", ".join(cells)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--bucket", type=float, default=2.0, help="seconds per timeline row")
    parser.add_argument("--long", type=float, default=5.0, help="ms: a long loop callback")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()

    from gateway.loadtest import LoadTestConfig, run_load_test

    cores = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cores) >= 2
    late: list[tuple[float, float]] = []
    lost: list[tuple[float, int]] = []
    gen_lag: list[tuple[float, float]] = []
    _patch_callers(late, lost)
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/trace.json"
        started = time.monotonic()
        lagger = asyncio.create_task(_generator_lag(gen_lag))
        report = await run_load_test(
            LoadTestConfig(
                calls=args.calls,
                rate=args.rate,
                duration=args.duration,
                audio=[AUDIO],
                progress=False,
                server_command=(sys.executable, str(HERE), "--serve", out),
                gateway_env={"TICK_TRACE_LONG_MS": str(args.long)},
                gateway_cpus=(cores[0],) if pin else None,
                generator_cpus=(cores[1],) if pin else None,
            )
        )
        lagger.cancel()
        trace = json.loads(Path(out).read_text())  # noqa: ASYNC240 (after the run)

    p = report["packets"]
    ratio = p["lost_or_late_ratio"] or 0.0
    print(
        f"{args.calls} calls at {args.rate:g}/s for {args.duration:g} s, "
        f"{'pinned' if pin else 'not pinned'}: {report['ended_cleanly']}/{args.calls} clean, "
        f"{100 * ratio:.2f} % late or lost (late {p['late']}, lost {p['lost']}, "
        f"late as the generator read them {p['late_at_read']}, "
        f"received {p['received']}); gateway {report['gateway']['cpu_ms_per_call_second']:.1f} "
        f"ms CPU per call-second; load average {os.getloadavg()[0]:.2f}"
    )
    ticks = trace["ticks"]
    long_calls = trace["long"]
    # Phases: the ramp lasts calls / rate from the first tick with calls.
    t0 = ticks[0][1] if ticks else started
    ramp_end = t0 + args.calls / args.rate + 1.0
    bucket = args.bucket
    rows: dict[int, dict[str, Any]] = {}

    def row(t: float) -> dict[str, Any]:
        return rows.setdefault(
            int((t - t0) // bucket),
            {
                "ticks": [],
                "cpu": [],
                "reads": [],
                "lens": [],
                "subs": 0,
                "long": Counter(),
                "late": 0,
                "lost": 0,
                "gen": [],
            },
        )

    for due, ran, read, total, subs, cpu in ticks:
        r = row(ran)
        r["cpu"].append(cpu)
        r["ticks"].append(ran - due)
        r["reads"].append(read)
        r["lens"].append(total)
        r["subs"] = max(r["subs"], subs)
    for start, spent, name in long_calls:
        if "FrameClock._on_tick" in name or "traced_tick" in name:
            continue
        row(start)["long"][name.split(":")[-1]] += spent
    for t, _ in late:
        row(t)["late"] += 1
    for t, gap in lost:
        row(t)["lost"] += gap
    for t, lag in gen_lag:
        row(t)["gen"].append(lag)

    print(
        f"\n{'t s':>5} {'subs':>4} {'ticks':>5} {'late p50/p99/max ms':>20} {'>20ms':>5} "
        f"{'read p50/max':>12} {'tick p50/p99/max ms':>20} {'CPU p50/max':>11} "
        f"{'late fr':>7} {'lost fr':>7} "
        f"{'gen lag p99':>11}  long callbacks (ms total)"
    )
    for key in sorted(rows):
        r = rows[key]
        ms = [x * 1000 for x in r["ticks"]]
        lens = [x * 1000 for x in r["lens"]]
        reads = [x * 1000 for x in r["reads"]]
        longs = ", ".join(f"{n} {s * 1000:.0f}" for n, s in r["long"].most_common(3))
        print(
            f"{key * bucket:>5.0f} {r['subs']:>4} {len(ms):>5} "
            f"{_pct(ms, 0.5):>6.1f}/{_pct(ms, 0.99):>6.1f}/{max(ms, default=0):>6.1f} "
            f"{sum(1 for x in ms if x > 20):>5} "
            f"{_pct(reads, 0.5):>5.1f}/{max(reads, default=0):>5.1f} "
            f"{_pct(lens, 0.5):>6.1f}/{_pct(lens, 0.99):>6.1f}/{max(lens, default=0):>6.1f} "
            f"{1000 * _pct(r['cpu'], 0.5):>5.1f}/{1000 * max(r['cpu'], default=0):>5.1f} "
            f"{r['late']:>7} {r['lost']:>7} {1000 * _pct(r['gen'], 0.99):>11.1f}  {longs}"
        )
    edges = [0.002, 0.005, 0.010, 0.020, 0.040, 0.060, 0.100]
    for phase, select in (
        ("ramp", lambda t: t < ramp_end),
        ("steady", lambda t: t >= ramp_end),
    ):
        print(f"\n{phase}:")
        print(
            _histogram("tick lateness", [ran - due for due, ran, *_ in ticks if select(ran)], edges)
        )
        print(_histogram("tick length", [x[3] for x in ticks if select(x[1])], edges))
        print(_histogram("tick CPU", [x[5] for x in ticks if select(x[1])], edges))
        print(_histogram("tick read", [x[2] for x in ticks if select(x[1])], edges))
        print(
            f"  frames late {sum(1 for t, _ in late if select(t))}, "
            f"lost {sum(g for t, g in lost if select(t))}; long callbacks "
            + ", ".join(
                f"{n} {c}x {s * 1000:.0f} ms"
                for n, (c, s) in sorted(
                    _by_name([x for x in long_calls if select(x[0])]).items(),
                    key=lambda kv: -kv[1][1],
                )[:6]
            )
        )


def _by_name(long_calls: list[list[Any]]) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for _, spent, name in long_calls:
        n = name.split(":")[-1]
        c, s = out.get(n, (0, 0.0))
        out[n] = (c + 1, s + spent)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        sys.exit(serve_traced(sys.argv[2]))
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
