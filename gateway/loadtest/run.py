"""One load test run: start the sandbox and the gateway, ramp the callers, sample, report.

The callers are built to be cheap, so the load generator is not what saturates
the machine: each recording is encoded to Opus once and the packets are reused
by every call, and what callers receive is counted, never decoded.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from .. import rtc
from ..sandbox.cloud import CloudAPISandbox
from .callers import CallStats, run_caller
from .phases import PHASE_MODES, PHASE_STEP, PhaseClocks, Phases, draw_phases
from .recordings import load_recordings
from .report import Sample, build_report
from .target import DEFAULT_SERVER, GatewayUnderTest, start_local_gateway


@dataclass
class LoadTestConfig:
    """What ``gateway loadtest`` was asked to do."""

    calls: int
    rate: float
    duration: float
    audio: list[str]
    bot: str = "echo"
    gateway_url: str | None = None
    app_secret: str | None = None
    access_token: str | None = None
    graph_port: int = 0
    seed: int = 1
    progress: bool = True
    # Start this instead of ``python -m gateway serve`` (the benchmarks' stock baseline).
    server_command: tuple[str, ...] | None = None
    # Extra environment for the local gateway (e.g. GATEWAY_RECORDINGS_DIR).
    gateway_env: dict[str, str] | None = None
    # Pin the local gateway to these cores, and the load generator (this process,
    # callers and sandbox) to these: measuring capacity on one core per side.
    gateway_cpus: tuple[int, ...] | None = None
    generator_cpus: tuple[int, ...] | None = None
    # When the callers send their 20 ms frames: each at a phase of its own (as phones
    # do), or all at the same instants (the load of the rounds before; see .phases).
    phases: Phases = "independent"


async def run_load_test(config: LoadTestConfig) -> dict[str, Any]:
    """Run the whole load test and return the report (a JSON-ready dict)."""
    if config.phases not in PHASE_MODES:
        raise ValueError(f"phases must be one of {PHASE_MODES}, got {config.phases!r}")
    if config.generator_cpus is None:
        return await _run(config)
    # The event loop's thread (and threads it starts from now on) run on those cores.
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(config.generator_cpus))
    try:
        return await _run(config)
    finally:
        os.sched_setaffinity(0, previous)


async def _run(config: LoadTestConfig) -> dict[str, Any]:
    recordings, warnings = await asyncio.get_running_loop().run_in_executor(
        None, load_recordings, config.audio
    )
    for warning in warnings:
        print(f"loadtest: {warning}", file=sys.stderr)
    rtc.configure(["127.0.0.1"])
    secret = config.app_secret or secrets.token_hex(16)
    token = config.access_token or secrets.token_hex(16)
    sandbox = CloudAPISandbox(
        webhook_url="", app_secret=secret, access_token=token, port=config.graph_port
    )
    await sandbox.start()
    gateway: GatewayUnderTest
    if config.gateway_url:
        gateway = GatewayUnderTest(config.gateway_url.rstrip("/"), secret, token)
    else:
        gateway = await start_local_gateway(
            sandbox.graph_url,
            bot=config.bot,
            max_calls=config.calls + 10,
            command=config.server_command or DEFAULT_SERVER,
            extra_env=config.gateway_env,
            cpus=config.gateway_cpus,
        )
        sandbox.app_secret, sandbox.access_token = gateway.app_secret, gateway.access_token
    sandbox.webhook_url = f"{gateway.url}/webhook"
    samples: list[Sample] = []
    results: list[CallStats] = []
    rng = random.Random(config.seed)
    clocks = PhaseClocks(asyncio.get_running_loop())
    phases = draw_phases(config.calls, config.seed) if config.phases == "independent" else None
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            before = await gateway.metrics(client)
            measured_from = time.perf_counter()
            cpu_before, sleeps_before = _generator_usage()
            tasks: list[asyncio.Task[CallStats]] = []
            sampler = asyncio.create_task(
                _sample(gateway, client, started, samples, results, tasks, config)
            )
            try:
                for i in range(config.calls):
                    caller_rng = random.Random(rng.random())
                    clock = clocks.clock(phases[i]) if phases is not None else None
                    tasks.append(
                        asyncio.create_task(
                            run_caller(
                                sandbox, i, recordings, config.duration, caller_rng, clock=clock
                            )
                        )
                    )
                    await asyncio.sleep(1 / config.rate)
                results.extend(await asyncio.gather(*tasks))
                if phases is not None:
                    for result in results:
                        result.phase_ms = phases[result.index] * PHASE_STEP * 1000
                await asyncio.sleep(1.0)  # let the last terminates land
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
                for task in tasks:
                    task.cancel()
            after = await gateway.metrics(client)
            measured = time.perf_counter() - measured_from
            cpu_after, sleeps_after = _generator_usage()
    finally:
        await sandbox.aclose()
        await gateway.stop()
    if config.progress:
        print(file=sys.stderr)
    settings = {k: v for k, v in asdict(config).items() if k not in ("app_secret", "access_token")}
    return build_report(
        settings,
        recordings,
        results,
        samples,
        before,
        after,
        wall=time.perf_counter() - started,
        measured=measured,
        generator=(cpu_after - cpu_before, sleeps_after - sleeps_before),
    )


def _generator_usage() -> tuple[float, int]:
    """This process's CPU seconds and voluntary context switches (its threads' sleeps)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_nvcsw


async def _sample(
    gateway: GatewayUnderTest,
    client: httpx.AsyncClient,
    started: float,
    samples: list[Sample],
    results: list[CallStats],
    tasks: Sequence[asyncio.Task[CallStats]],
    config: LoadTestConfig,
) -> None:
    while True:
        await asyncio.sleep(1.0)
        try:
            m = await gateway.metrics(client)
        except httpx.HTTPError:
            continue
        samples.append(
            Sample(
                t=time.perf_counter() - started,
                active_calls=m.get("gateway_calls_active", 0),
                cpu_seconds=m.get("process_cpu_seconds_total", 0),
                call_seconds=m.get("gateway_call_seconds_total", 0),
                rss_bytes=m.get("process_resident_memory_bytes", 0),
                loop_lag_p99=m.get("gateway_event_loop_lag_p99_seconds", 0),
            )
        )
        if config.progress:
            done = [t.result() for t in tasks if t.done() and not t.cancelled()]
            failed = sum(1 for r in done if r.failure)
            print(
                f"\rloadtest: {samples[-1].t:5.0f} s  active {int(samples[-1].active_calls):3d}"
                f"  done {len(done):3d}/{config.calls}  failed {failed}"
                f"  loop lag p99 {samples[-1].loop_lag_p99 * 1000:5.1f} ms",
                end="",
                file=sys.stderr,
                flush=True,
            )
