"""The load most benchmarks measure: simulated WhatsApp callers, recorded speech, the echo bot."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.loadtest import LoadTestConfig, run_load_test
from gateway.loadtest.phases import PHASE_MODES, Phases

AUDIO = str(Path(__file__).resolve().parent.parent.parent / "shared" / "audio")


async def run_echo_calls(calls: int, duration: float, **settings: Any) -> dict[str, Any]:
    """A load test of ``calls`` echo-bot calls of ``duration`` s, 10 a second; its report.

    ``settings`` are further :class:`LoadTestConfig` fields (``server_command``,
    ``gateway_env``, ``phases``: by default those of :func:`use_phases`).
    """
    settings.setdefault("phases", _phases)
    return await run_load_test(
        LoadTestConfig(
            calls=calls,
            rate=10,
            duration=duration,
            audio=[AUDIO],
            bot="echo",
            progress=False,
            **settings,
        )
    )


def add_phases_option(parser: argparse.ArgumentParser) -> None:
    """``--phases``: when the simulated callers send their frames (LoadTestConfig.phases)."""
    parser.add_argument(
        "--phases",
        choices=PHASE_MODES,
        default=LoadTestConfig.phases,
        help="callers send each at a random phase of its own, as phones do (independent, "
        "the default), or all at the same instants (shared: the load of the figures "
        "measured before the option)",
    )


_phases: Phases = LoadTestConfig.phases


def use_phases(phases: Phases) -> None:
    """Have :func:`run_echo_calls` load with ``phases`` from now on, unless told otherwise
    (a benchmark's ``--phases``, without passing it down through its own functions)."""
    global _phases
    _phases = phases
