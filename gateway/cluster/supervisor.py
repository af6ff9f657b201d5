"""``gateway serve --workers N``: N worker processes sharing one listen port.

Each worker is an ordinary ``gateway serve`` (one event loop, one core) bound
with ``SO_REUSEPORT``, so the kernel spreads incoming connections over them; they
share calls through Redis. The supervisor only starts, watches and signals them:
SIGTERM or Ctrl-C is passed on once per signal (the first drains every worker,
a second ends their calls now), and a worker that dies is started again.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

# A worker that dies this soon after starting is not restarted (a setup error).
FAST_FAIL_SECONDS = 5.0


async def run_workers(count: int, env: Mapping[str, str]) -> int:
    """Run ``count`` workers with ``env`` until signalled; 0 when every worker exited 0."""
    stopping = False
    procs: dict[int, asyncio.subprocess.Process] = {}
    loop = asyncio.get_running_loop()

    def forward(sig: signal.Signals) -> None:
        nonlocal stopping
        stopping = True
        log.info("supervisor: %s passed to %d worker(s)", sig.name, len(procs))
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, forward, sig)

    async def worker(index: int) -> int:
        while True:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "serve",
                env={**env, "GATEWAY_REUSE_PORT": "1", "GATEWAY_WORKER_INDEX": str(index)},
                # Its own session: a terminal's Ctrl-C reaches the supervisor only,
                # which passes it on exactly once.
                start_new_session=True,
            )
            procs[index] = proc
            code = await proc.wait()
            if stopping:
                return code
            if time.monotonic() - started < FAST_FAIL_SECONDS:
                log.error("supervisor: worker %d failed at start (exit %d)", index, code)
                forward(signal.SIGTERM)
                return code or 1
            log.error("supervisor: worker %d exited (%d); starting it again", index, code)

    try:
        codes = await asyncio.gather(*(worker(i) for i in range(count)))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0 if all(code == 0 for code in codes) else 1


def worker_env(base: Mapping[str, str], **settings: object) -> dict[str, str]:
    """``base`` with the given GATEWAY_* settings (None skipped) as strings."""
    env = dict(base)
    for name, value in settings.items():
        if value is not None:
            env[f"GATEWAY_{name.upper()}"] = str(value)
    return env
