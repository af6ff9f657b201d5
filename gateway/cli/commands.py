"""The ``gateway`` commands that serve or drive calls: ``serve``, ``cluster``, ``loadtest``.

Each imports what it runs when it runs: ``gateway --help`` and ``gateway bots``
load none of it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from ..errors import ConfigError
from .parser import serving_options

log = logging.getLogger("gateway")


async def serve(args: argparse.Namespace) -> int:
    """``gateway serve``: one process serving calls until a signal drains it."""
    from ..app import Gateway
    from ..config import load_settings
    from ..heap import freeze_startup_objects, map_large_allocations
    from ..pipeline.plugins import session_for
    from ..pipeline.vad import VadConfig
    from ..shutdown import ExitDeadline

    settings = load_settings(**serving_options(args))
    map_large_allocations()
    vad = VadConfig(voice_gate=settings.vad_voice_gate)
    gateway = Gateway(
        settings,
        session=session_for(settings.bot, vad=vad),
        sessions=lambda name: session_for(name, vad=vad),
    )
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    await gateway.start()
    freeze_startup_objects()
    print(
        f"gateway: serving webhooks on {gateway.url}/webhook (bot {settings.bot}, "
        f"Opus complexity {settings.opus_complexity}, media read at {settings.media_read}); "
        "Ctrl-C or SIGTERM drains",
        flush=True,
    )
    await signals.get()
    # First signal: drain (readyz 503, calls run on); a second one ends every call now.
    drain = asyncio.create_task(gateway.drain())
    again = asyncio.create_task(signals.get())
    await asyncio.wait({drain, again}, return_when=asyncio.FIRST_COMPLETED)
    if again.done():
        log.warning("second signal: ending every call now")
    for task in (drain, again):
        task.cancel()
    await asyncio.gather(drain, again, return_exceptions=True)
    # From here the process is gone within the shutdown timeout, whatever hangs.
    ExitDeadline(settings.shutdown_timeout).arm()
    await gateway.aclose()
    return 0


async def serve_workers(args: argparse.Namespace, redis_url: str | None) -> int:
    """``gateway serve --workers N``: N worker processes on one port, one Redis."""
    from ..cluster.redis_server import free_port
    from ..cluster.supervisor import run_workers, worker_env
    from ..config import load_settings

    env = worker_env(os.environ, **serving_options(args), redis_url=redis_url)
    settings = load_settings(env)  # refuse bad settings here, not N times
    if settings.redis_url is None:
        raise ConfigError(
            "--workers needs GATEWAY_REDIS_URL: workers share calls through Redis "
            "(or run `gateway cluster`, which starts one)"
        )
    if settings.port == 0:
        env["GATEWAY_PORT"] = str(free_port(settings.host))
    url = f"http://{settings.host}:{env.get('GATEWAY_PORT', settings.port)}"
    print(f"gateway: {args.workers} workers serving webhooks on {url}/webhook", flush=True)
    return await run_workers(args.workers, env)


async def cluster(args: argparse.Namespace) -> int:
    """``gateway cluster``: a private Redis and N workers on this machine."""
    from ..cluster.redis_server import RedisServer

    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.sandbox:
        from ..sandbox.cluster_demo import run_sandbox_cluster

        return await run_sandbox_cluster(args.workers, calls=args.calls, port=args.port)
    redis = RedisServer()
    await redis.start()
    print(f"gateway: Redis at {redis.url} (no persistence)", flush=True)
    try:
        return await serve_workers(args, redis_url=redis.url)
    finally:
        await redis.aclose()


async def loadtest(args: argparse.Namespace) -> int:
    """``gateway loadtest``: many simulated calls, then their report."""
    from ..loadtest import (
        LoadTestConfig,
        run_load_test,
        save_report,
        summary_table,
        write_charts,
    )

    if args.calls < 1 or args.rate <= 0 or args.duration <= 0:
        raise ConfigError("--calls, --rate and --duration must be positive")
    config = LoadTestConfig(
        calls=args.calls,
        rate=args.rate,
        duration=args.duration,
        audio=args.audio,
        bot=args.bot,
        gateway_url=args.gateway_url,
        app_secret=os.environ.get("WHATSAPP_APP_SECRET"),
        access_token=os.environ.get("WHATSAPP_ACCESS_TOKEN"),
        graph_port=args.graph_port,
        seed=args.seed,
        phases=args.phases,
    )
    report = await run_load_test(config)
    print(summary_table(report))
    if args.report:
        save_report(report, args.report)
        print(f"report: {args.report}")
    if args.charts:
        for path in write_charts(report, args.charts):
            print(f"chart: {path}")
    return 0 if report["ended_cleanly"] == report["calls"] else 1
