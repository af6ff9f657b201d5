"""A load test's report: per-second samples of the gateway, percentiles, the summary table."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .callers import CallStats
from .recordings import Recording
from .target import MAIN_THREAD_SLEEPS


@dataclass
class Sample:
    """One second of the run, as the gateway reported it."""

    t: float
    active_calls: float
    cpu_seconds: float
    call_seconds: float
    rss_bytes: float
    loop_lag_p99: float


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of ``values`` (None when empty)."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    arr = np.asarray(values, float)
    return {
        "count": len(arr),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }


def build_report(
    config: dict[str, Any],
    recordings: Sequence[Recording],
    results: Sequence[CallStats],
    samples: Sequence[Sample],
    before: dict[str, float],
    after: dict[str, float],
    wall: float,
    measured: float,
    generator: tuple[float, int] | None = None,
) -> dict[str, Any]:
    """The JSON-ready report of a run; ``config`` is what was asked, secrets left out.

    ``before`` and ``after`` are the gateway's figures at the start and the end of the
    calls, ``measured`` seconds apart; ``wall`` is the whole run's time; ``generator``
    the load generator's own CPU seconds and sleeps over those ``measured`` seconds.
    """
    cpu = after.get("process_cpu_seconds_total", 0) - before.get("process_cpu_seconds_total", 0)
    call_seconds = after.get("gateway_call_seconds_total", 0) - before.get(
        "gateway_call_seconds_total", 0
    )
    peak = max((s.active_calls for s in samples), default=0)
    sleeps = None
    if MAIN_THREAD_SLEEPS in before and MAIN_THREAD_SLEEPS in after:
        sleeps = after[MAIN_THREAD_SLEEPS] - before[MAIN_THREAD_SLEEPS]
    rss = [s.rss_bytes for s in samples]
    received = sum(r.packets_received for r in results)
    sound = sum(r.sound_packets for r in results)
    speech_sent = sum(r.speech_packets_sent for r in results)
    failures = Counter(r.failure for r in results if r.failure)
    return {
        "config": config,
        "recordings": [r.name for r in recordings],
        "wall_seconds": wall,
        "calls": len(results),
        "ended_cleanly": sum(1 for r in results if r.ended_cleanly),
        "failures": dict(failures),
        "metrics_ms": {
            "setup_accept": percentiles([r.setup_accept_ms for r in results if r.setup_accept_ms]),
            "setup_media": percentiles([r.setup_media_ms for r in results if r.setup_media_ms]),
            "response": percentiles([x for r in results for x in r.response_ms]),
            "barge_in_stop": percentiles([x for r in results for x in r.barge_in_stop_ms]),
        },
        "packets": {
            "sent": sum(r.packets_sent for r in results),
            "received": received,
            "lost": sum(r.lost_packets for r in results),
            "late": sum(r.late_packets for r in results),
            # Late as the generator's loop read them (its own queueing included).
            "late_at_read": sum(r.late_at_read_packets for r in results),
            "lost_or_late_ratio": (
                sum(r.lost_packets + r.late_packets for r in results) / received
                if received
                else None
            ),
            # Whether the server echoed: the sound packets the callers heard over the
            # recorded-speech packets they sent (1 or more for an echo of everything;
            # less for an echo of utterances, which barge-ins and the callers' next
            # turns cut short; 0 for a server that sends silence).
            "speech_sent": speech_sent,
            "sound_received": sound,
            "heard_back_ratio": sound / speech_sent if speech_sent else None,
        },
        "gateway": {
            "cpu_seconds": cpu,
            "call_seconds": call_seconds,
            "cpu_ms_per_call_second": 1000 * cpu / call_seconds if call_seconds else None,
            "peak_active_calls": peak,
            "rss_bytes_at_start": before.get("process_resident_memory_bytes"),
            "rss_bytes_peak": max(rss, default=0),
            # A second after the last caller hung up.
            "rss_bytes_at_end": after.get("process_resident_memory_bytes"),
            "rss_bytes_per_call": (max(rss) - min(rss)) / peak if rss and peak else None,
            "loop_lag_p99_ms_max": 1000 * max((s.loop_lag_p99 for s in samples), default=0),
            # The event loop's wake-ups (its thread's sleeps; None for a remote gateway).
            "wakeups": sleeps,
            "wakeups_per_second": sleeps / measured if sleeps is not None and measured else None,
            "wakeups_per_call_second": (
                sleeps / call_seconds if sleeps is not None and call_seconds else None
            ),
        },
        # The load generator (this process: sandbox and callers) over the same window.
        "generator": {
            "cpu_seconds": generator[0] if generator else None,
            "cpu_ms_per_call_second": (
                1000 * generator[0] / call_seconds if generator and call_seconds else None
            ),
            "wakeups_per_second": generator[1] / measured if generator and measured else None,
        },
        "timeline": [asdict(s) for s in samples],
        "per_call": [
            {k: v for k, v in asdict(r).items() if k != "first_packet_at"} for r in results
        ],
    }


def summary_table(report: dict[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    lines = [
        f"calls: {report['calls']}, ended cleanly: {report['ended_cleanly']}, "
        f"wall time {report['wall_seconds']:.0f} s",
        "",
        f"{'metric (ms)':<28}{'count':>6}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}",
    ]
    names = {
        "setup_accept": "setup: webhook -> accept",
        "setup_media": "setup: webhook -> media",
        "response": "response: speech end -> bot",
        "barge_in_stop": "barge-in: talk -> bot stops",
    }
    for key, label in names.items():
        p = report["metrics_ms"][key]
        cells = "".join(
            f"{p[q]:9.0f}" if p[q] is not None else f"{'-':>9}"
            for q in ("p50", "p95", "p99", "max")
        )
        lines.append(f"{label:<28}{p['count']:>6}{cells}")
    pk = report["packets"]
    ratio = pk["lost_or_late_ratio"]
    lines += [
        "",
        f"packets: sent {pk['sent']}, received {pk['received']}, "
        f"lost {pk['lost']}, late {pk['late']}"
        + (f" ({100 * ratio:.2f}% lost or late)" if ratio is not None else ""),
    ]
    if pk.get("heard_back_ratio") is not None:
        lines.append(
            f"heard back: {pk['sound_received']} sound packets for {pk['speech_sent']} "
            f"sent of recorded speech ({pk['heard_back_ratio']:.2f})"
        )
    g = report["gateway"]
    if g["cpu_ms_per_call_second"] is not None:
        per_call = g["rss_bytes_per_call"]
        lines.append(
            f"gateway: {g['cpu_ms_per_call_second']:.1f} ms CPU per call-second, "
            f"peak {g['peak_active_calls']:.0f} calls, "
            f"RSS peak {g['rss_bytes_peak'] / 2**20:.0f} MiB"
            + (f" (~{per_call / 2**20:.1f} MiB per call)" if per_call else "")
            + f", event-loop lag p99 max {g['loop_lag_p99_ms_max']:.1f} ms"
        )
    if g["wakeups_per_second"] is not None:
        lines.append(
            f"gateway event loop: {g['wakeups_per_second']:.0f} wake-ups a second, "
            f"{g['wakeups_per_call_second']:.1f} per call-second"
        )
    gen = report.get("generator") or {}
    if gen.get("cpu_ms_per_call_second") is not None:
        phases = report["config"].get("phases", "shared")
        lines.append(
            f"load generator ({phases} phases): {gen['cpu_ms_per_call_second']:.1f} ms CPU "
            f"per call-second, {gen['wakeups_per_second']:.0f} wake-ups a second"
        )
    if report["failures"]:
        lines.append("failures by reason:")
        for reason, count in sorted(report["failures"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:4d}  {reason}")
    return "\n".join(lines)


def save_report(report: dict[str, Any], path: str) -> None:
    """Write the JSON report."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
