"""PNG charts of a load test report (matplotlib, an optional extra)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from ..errors import GatewayError


def write_charts(report: dict[str, Any], folder: str) -> list[str]:
    """PNG charts of the run (needs matplotlib: ``pip install '.[charts]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise GatewayError(
            "charts need matplotlib: pip install 'wa-voice-gateway[charts]'"
        ) from exc
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    responses = [x for c in report["per_call"] for x in c["response_ms"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(responses or [0], bins=30, color="#3b7dd8")
    ax.set_xlabel("response latency (ms): caller speech end -> first bot audio")
    ax.set_ylabel("responses")
    ax.set_title(f"{report['calls']} calls, {len(responses)} responses")
    fig.tight_layout()
    paths.append(str(out / "latency.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    timeline = report["timeline"]
    if timeline:
        t = [s["t"] for s in timeline]
        cpu = [0.0] + [
            100 * (b["cpu_seconds"] - a["cpu_seconds"]) / max(1e-9, b["t"] - a["t"])
            for a, b in itertools.pairwise(timeline)
        ]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(t, [s["active_calls"] for s in timeline], color="#3b7dd8", label="active calls")
        ax.set_xlabel("seconds")
        ax.set_ylabel("active calls")
        ax2 = ax.twinx()
        ax2.plot(t, cpu, color="#d8563b", label="gateway CPU %")
        ax2.set_ylabel("gateway CPU (% of one core)")
        fig.legend(loc="upper left")
        fig.tight_layout()
        paths.append(str(out / "load.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
