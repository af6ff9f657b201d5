"""Single mode vs cluster mode, and 1 worker vs 2 workers, under the same load.

Each mode is a real deployment started as a subprocess: ``gateway serve`` alone
(single mode, no Redis), or a private redis-server plus ``gateway serve --workers
N`` (cluster mode, workers sharing the port with SO_REUSEPORT). The load tester
drives it through ``--gateway-url`` exactly as an operator would, with simulated
WhatsApp users speaking the recordings in ../shared/audio to the echo bot. CPU is
the process CPU time of every worker added up (``/cluster`` in cluster mode), per
second of call, so it survives a loaded machine better than wall time does.

    python benchmarks/cluster.py [--calls 20] [--duration 20] [--modes single cluster-1 cluster-2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
from echo_load import add_phases_option

from gateway.cluster.redis_server import RedisServer, free_port
from gateway.loadtest import LoadTestConfig, run_load_test

AUDIO = str(Path(__file__).resolve().parent.parent.parent / "shared" / "audio")


async def _deployment(mode: str, calls: int, graph_port: int, secret: str, token: str) -> Any:
    """Start the gateway(s) for ``mode``; returns (url, process, redis or None)."""
    port = free_port()
    env = {
        **os.environ,
        "WHATSAPP_ACCESS_TOKEN": token,
        "WHATSAPP_APP_SECRET": secret,
        "WHATSAPP_VERIFY_TOKEN": secrets.token_hex(8),
        "WHATSAPP_PHONE_NUMBER_ID": "106540352242922",
        "WHATSAPP_GRAPH_URL": f"http://127.0.0.1:{graph_port}/v23.0",
        "GATEWAY_PORT": str(port),
        "GATEWAY_MEDIA_ADDRESSES": "127.0.0.1",
        "GATEWAY_BOT": "echo",
        "GATEWAY_MAX_CALLS": str(calls + 10),
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    redis = None
    command = [sys.executable, "-m", "gateway", "serve"]
    workers = 1
    if mode.startswith("cluster-"):
        workers = int(mode.split("-")[1])
        redis = RedisServer()
        await redis.start()
        env["GATEWAY_REDIS_URL"] = redis.url
        command += ["--workers", str(workers)] if workers > 1 else []
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client, asyncio.timeout(60):
        while True:
            try:
                if redis is None:
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        break
                else:
                    answer = await client.get(f"{url}/cluster")
                    if answer.status_code == 200 and len(answer.json()["workers"]) == workers:
                        break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    return url, proc, redis


async def _run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    graph_port = free_port()
    secret, token = secrets.token_hex(16), secrets.token_hex(16)
    url, proc, redis = await _deployment(mode, args.calls, graph_port, secret, token)
    try:
        return await run_load_test(
            LoadTestConfig(
                calls=args.calls,
                rate=args.rate,
                duration=args.duration,
                audio=[AUDIO],
                gateway_url=url,
                app_secret=secret,
                access_token=token,
                graph_port=graph_port,
                progress=False,
                phases=args.phases,
            )
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if redis is not None:
            await redis.aclose()


def _pair(q: dict[str, float | None]) -> str:
    return f"{q['p50'] or 0:>6.1f}/{q['p99'] or 0:<7.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="concurrent calls (default 20)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per call")
    parser.add_argument("--rate", type=float, default=10.0, help="calls started per second")
    parser.add_argument(
        "--modes", nargs="+", default=["single", "cluster-1", "cluster-2"], metavar="MODE"
    )
    add_phases_option(parser)
    args = parser.parse_args()
    print(
        f"{args.calls} concurrent echo-bot calls of {args.duration:.0f} s, "
        f"{os.cpu_count()} cores (load generator on the same machine); times in ms p50/p99"
    )
    print(
        f"{'mode':<10} {'clean':>7} {'late+lost %':>11} {'webhook->accept':>16} "
        f"{'webhook->media':>15} {'response':>12} {'CPU ms/call-s':>13} {'lag p99':>8}"
    )
    for mode in args.modes:
        report = await _run(mode, args)
        m, p, g = report["metrics_ms"], report["packets"], report["gateway"]
        ratio = p["lost_or_late_ratio"] or 0.0
        cpu = g["cpu_ms_per_call_second"] or 0.0

        print(
            f"{mode:<10} {report['ended_cleanly']:>3}/{args.calls:<3} {100 * ratio:>11.2f} "
            f"{_pair(m['setup_accept']):>16} {_pair(m['setup_media']):>15} "
            f"{_pair(m['response']):>12} "
            f"{cpu:>13.1f} {g['loop_lag_p99_ms_max']:>8.1f}",
            flush=True,
        )
        if report["failures"]:
            print(f"{'':<10} failures: {report['failures']}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
