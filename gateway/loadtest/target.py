"""The gateway under load: a subprocess started for the run, or a running one given by URL."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from ..errors import GatewayError
from ..metrics import parse_prometheus

DEFAULT_SERVER = (sys.executable, "-m", "gateway", "serve")

MAIN_THREAD_SLEEPS = "loadtest_gateway_main_thread_sleeps"
"""The figure :meth:`GatewayUnderTest.metrics` adds for a gateway started here."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayUnderTest:
    """A gateway to load: started here as a subprocess, or a remote one."""

    url: str
    app_secret: str
    access_token: str
    process: asyncio.subprocess.Process | None = None
    # The data dir made for the subprocess alone (removed on stop).
    temp_dir: str | None = None

    async def metrics(self, client: httpx.AsyncClient) -> dict[str, float]:
        """The gateway's /metrics, parsed; a cluster's figures summed over its workers.

        Behind one URL a cluster's /metrics is one (random) worker's, so CPU, call
        seconds, calls and memory come from ``/cluster``, which adds up every worker.
        """
        response = await client.get(f"{self.url}/metrics")
        figures = parse_prometheus(response.text)
        if "gateway_cluster_redis_up" in figures:
            overview = (await client.get(f"{self.url}/cluster")).json()
            total = overview["total"]
            figures["process_cpu_seconds_total"] = total["cpu_seconds"]
            figures["gateway_call_seconds_total"] = total["call_seconds"]
            figures["gateway_active_calls"] = total["calls"]
            figures["process_resident_memory_bytes"] = total["rss_bytes"]
            figures["gateway_cluster_workers"] = len(overview["workers"])
        sleeps = self.main_thread_sleeps()
        if sleeps is not None and "gateway_cluster_redis_up" not in figures:
            figures[MAIN_THREAD_SLEEPS] = sleeps
        return figures

    def main_thread_sleeps(self) -> int | None:
        """How often the gateway's main thread has slept so far; None for a remote gateway.

        The kernel's count of the thread's voluntary context switches, read from
        outside (``/proc``): nothing runs in the gateway for it. The main thread is
        the event loop's, and it sleeps in the loop's ``epoll_wait`` until a timer
        or a socket wakes it, so this is the loop's wake-ups, plus the rarer times
        it waits for the GIL (held by another thread) or for a blocking call.
        Each sleep and wake-up costs the process CPU of its own (on a VM, about
        0.1-0.25 ms: see docs/performance.md).
        """
        if self.process is None:
            return None
        pid = self.process.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        return int(line.split()[1])
        except OSError:  # exited, or not Linux
            pass
        return None

    async def stop(self) -> None:
        """Stop the subprocess, if we started one."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


async def start_local_gateway(
    graph_url: str,
    *,
    bot: str,
    max_calls: int,
    extra_env: dict[str, str] | None = None,
    command: Sequence[str] = DEFAULT_SERVER,
    cpus: Sequence[int] | None = None,
) -> GatewayUnderTest:
    """Run ``command`` (the gateway by default) on a free loopback port, using ``graph_url``.

    ``cpus`` pins the process to those cores (``os.sched_setaffinity``).
    Its store goes to a temporary data dir unless ``extra_env`` names GATEWAY_DATA_DIR.
    """
    port = _free_port()
    extra_env = extra_env or {}
    temp_dir = None
    if "GATEWAY_DATA_DIR" not in extra_env:
        temp_dir = tempfile.mkdtemp(prefix="gateway-data-")
        extra_env = {**extra_env, "GATEWAY_DATA_DIR": temp_dir}
    secret, token = secrets.token_hex(16), secrets.token_hex(16)
    env = {
        **os.environ,
        "WHATSAPP_ACCESS_TOKEN": token,
        "WHATSAPP_APP_SECRET": secret,
        "WHATSAPP_VERIFY_TOKEN": secrets.token_hex(8),
        "WHATSAPP_PHONE_NUMBER_ID": "106540352242922",
        "WHATSAPP_GRAPH_URL": graph_url,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_BOT": bot,
        "GATEWAY_MAX_CALLS": str(max_calls),
        "GATEWAY_MEDIA_ADDRESSES": "127.0.0.1",
        "GATEWAY_LOG_LEVEL": "WARNING",
        **extra_env,
    }
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    if cpus is not None:
        # Before it has done anything worth measuring: Python is still starting.
        os.sched_setaffinity(process.pid, set(cpus))
    gateway = GatewayUnderTest(f"http://127.0.0.1:{port}", secret, token, process, temp_dir)
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if process.returncode is not None:
                await gateway.stop()
                raise GatewayError(f"the gateway exited with code {process.returncode}")
            try:
                if (await client.get(f"{gateway.url}/healthz")).status_code == 200:
                    return gateway
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    await gateway.stop()
    raise GatewayError("the gateway did not come up within 10 s")
