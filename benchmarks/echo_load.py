"""The load most benchmarks measure: simulated WhatsApp callers, recorded speech, the echo bot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.loadtest import LoadTestConfig, run_load_test

AUDIO = str(Path(__file__).resolve().parent.parent.parent / "shared" / "audio")


async def run_echo_calls(calls: int, duration: float, **settings: Any) -> dict[str, Any]:
    """A load test of ``calls`` echo-bot calls of ``duration`` s, 10 a second; its report.

    ``settings`` are further :class:`LoadTestConfig` fields (``server_command``,
    ``gateway_env``...).
    """
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
