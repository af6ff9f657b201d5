"""What the benchmarks' baseline servers (stock aiortc echo, Pipecat) share with the gateway.

The figures the load tester reads from the gateway's /metrics, a /healthz, and the
gateway's way of running: on 127.0.0.1:GATEWAY_PORT until SIGTERM. aiohttp and the
standard library only: the Pipecat server imports it from Pipecat's own virtualenv
(with ``benchmarks/`` on PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web


def metrics_text(calls_active: int, call_seconds: float) -> str:
    """This process's CPU (all threads) and RSS, with its calls up and call-seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/statm", "rb") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return (
        f"process_cpu_seconds_total {usage.ru_utime + usage.ru_stime:.6f}\n"
        f"process_resident_memory_bytes {rss}\n"
        f"gateway_calls_active {calls_active}\n"
        f"gateway_call_seconds_total {call_seconds:.6f}\n"
    )


async def serve(
    app: web.Application,
    calls: Callable[[], tuple[int, float]],
    end_calls: Callable[[], Awaitable[None]],
) -> None:
    """Serve ``app`` plus /metrics and /healthz until SIGTERM, then ``end_calls()``.

    ``calls()``: the calls up now and the call-seconds so far, for /metrics.
    """

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=metrics_text(*calls()))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(os.environ["GATEWAY_PORT"])).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await end_calls()
    await runner.cleanup()
