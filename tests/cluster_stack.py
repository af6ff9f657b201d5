"""A real cluster for tests: redis-server, N `gateway serve` worker processes, the
sandbox playing Meta, and a random load balancer in front of the workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis import asyncio as aioredis

from gateway.cluster import keys
from gateway.cluster.redis_server import RedisServer
from gateway.sandbox.balancer import RandomBalancer
from gateway.sandbox.cloud import CloudAPISandbox
from gateway.sandbox.user import SimulatedUser, UserCall

from .conftest import ACCESS_TOKEN, API_KEY, APP_SECRET, PHONE_NUMBER_ID, VERIFY_TOKEN

LEASE_SECONDS = 4
# Worker logs of failed tests are copied here: pytest deletes its temporary
# directories, and with them the only trace of why a worker misbehaved.
KEPT_LOGS = Path(tempfile.gettempdir()) / "gateway-test-logs"


@dataclass
class Worker:
    """One `gateway serve` process of the cluster."""

    proc: asyncio.subprocess.Process
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 40) -> str:
        """The end of its log (for failure messages)."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    async def draining(self, seconds: float = 10) -> None:
        """Wait until it says it drains (``/readyz`` 503), or it exited, or ``seconds``."""
        try:
            async with httpx.AsyncClient() as http, asyncio.timeout(seconds):
                while self.proc.returncode is None:
                    try:
                        if (await http.get(f"{self.url}/readyz")).status_code == 503:
                            return
                    except httpx.HTTPError:
                        pass  # stopped listening: exiting
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass

    def keep_log(self, why: str) -> Path:
        """Copy the log out of pytest's temporary directory; returns the copy's path."""
        return keep(self.log, f"{why}-pid{self.pid}")

    async def exits_zero(self, seconds: float) -> None:
        """Assert that the process exits with 0 within ``seconds``.

        If it does not exit, it is sent SIGABRT first: its faulthandler
        (``PYTHONFAULTHANDLER``) writes every thread's stack to the log. Either
        way the failure message names a copy of the log that outlives pytest's
        temporary directory, and quotes its end.
        """
        try:
            code = await asyncio.wait_for(self.proc.wait(), seconds)
        except TimeoutError:
            self.proc.send_signal(signal.SIGABRT)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
            kept = self.keep_log("no-exit")
            raise AssertionError(
                f"worker {self.pid} had not exited {seconds:.0f} s later; aborted it (thread"
                f" stacks at the end of its log); log kept at {kept}:\n{self.tail(120)}"
            ) from None
        if code != 0:
            kept = self.keep_log(f"exit{code}")
            raise AssertionError(
                f"worker {self.pid} exited with {code}; log kept at {kept}:\n{self.tail(120)}"
            )


@dataclass
class Cluster:
    """Everything a cluster test talks to."""

    redis: RedisServer
    sandbox: CloudAPISandbox
    balancer: RandomBalancer
    tmp: Path
    workers: list[Worker] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    _users: int = 0
    _started: int = 0  # workers ever started: each gets a log file of its own

    @property
    def db(self) -> Any:
        """A Redis client for looking at the cluster's state."""
        return aioredis.Redis.from_url(self.redis.url, decode_responses=True)

    async def add_worker(self, **env: str) -> Worker:
        """Start one more worker and put it behind the balancer."""
        # Never a name in use: a new worker's log must not truncate a live one's.
        log = self.tmp / f"worker-{self._started}.log"
        self._started += 1
        proc, url = await start_serve({**self.env, **env}, log)
        worker = Worker(proc, url, log)
        self.workers.append(worker)
        self.balancer.backends.append(url)
        return worker

    def keep_logs(self, why: str) -> list[Path]:
        """Copy every worker's log, removed workers' too, out of pytest's temporary directory."""
        return [keep(log, why) for log in sorted(self.tmp.glob("worker-*.log"))]

    def remove(self, worker: Worker) -> None:
        """Take a worker out of the balancer (as a failing health check would)."""
        if worker.url in self.balancer.backends:
            self.balancer.backends.remove(worker.url)
        if worker in self.workers:
            self.workers.remove(worker)

    def api(self, worker: Worker | None = None) -> httpx.AsyncClient:
        """An API client for ``worker`` (default: a random one)."""
        worker = worker or random.choice(self.workers)
        return httpx.AsyncClient(
            base_url=worker.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=20
        )

    def user(self, **kwargs: Any) -> SimulatedUser:
        """A new simulated WhatsApp user."""
        self._users += 1
        n = self._users
        return SimulatedUser(self.sandbox, f"1555{n:07d}", f"User {n}", **kwargs)

    async def answered_call(self) -> UserCall:
        """A user's call through the balancer, answered and with media up."""
        call = await self.user().place_call(inbound=False)
        async with asyncio.timeout(30):
            await call.accepted.wait()
            await call.media_up.wait()
        return call

    async def owner(self, call_id: str) -> str | None:
        """The worker id that owns a call, from Redis."""
        async with self.db as db:
            owner: str | None = await db.hget(keys.OWNERS, call_id)
            return owner

    async def worker_of(self, call_id: str) -> Worker:
        """The worker process that owns a call."""
        owner = await self.owner(call_id)
        assert owner is not None, f"no owner for {call_id}"
        pid = int(owner.split("-")[-2])
        return next(w for w in self.workers if w.pid == pid)

    async def record(self, call_id: str, worker: Worker | None = None) -> dict[str, Any]:
        """``GET /calls/{id}`` through a worker (default random)."""
        async with self.api(worker) as api:
            response = await api.get(f"/calls/{call_id}")
            assert response.status_code == 200, response.text
            data: dict[str, Any] = response.json()
            return data

    async def wait_record(
        self, call_id: str, seconds: float = 15, **expected: Any
    ) -> dict[str, Any]:
        """Poll a record (through random workers) until it has the expected fields."""
        data: Any = None
        try:
            async with asyncio.timeout(seconds):
                while True:
                    try:
                        data = await self.record(call_id)
                        if all(data.get(k) == v for k, v in expected.items()):
                            return dict(data)
                    except (AssertionError, httpx.HTTPError) as exc:
                        data = exc
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"{call_id}: wanted {expected}, last saw {data}") from None

    async def stop_worker(self, worker: Worker, sig: int = signal.SIGTERM) -> int:
        """Signal a worker and wait for its exit code."""
        self.remove(worker)
        worker.proc.send_signal(sig)
        return await worker.proc.wait()

    async def aclose(self) -> None:
        """Stop everything (workers first: their shutdown terminates calls via the sandbox)."""
        for worker in list(self.workers):
            if worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in list(self.workers):
            if worker.proc.returncode is None:
                # The second ends calls now; sent once the first was handled, as two
                # SIGTERMs sent back to back are one when the kernel delivers them.
                await worker.draining()
                with contextlib.suppress(ProcessLookupError):  # drained and gone meanwhile
                    worker.proc.send_signal(signal.SIGTERM)
        for worker in list(self.workers):
            try:
                code = await asyncio.wait_for(worker.proc.wait(), 20)
            except TimeoutError:
                worker.proc.send_signal(signal.SIGABRT)  # its stacks to its log
                code = await worker.proc.wait()
            if code != 0:  # a shutdown that failed or hung: keep what its log says
                kept = worker.keep_log("teardown")
                print(f"worker {worker.pid} exited with {code} at teardown; log kept at {kept}")
        await self.balancer.aclose()
        await self.sandbox.aclose()
        await self.redis.aclose()


def keep(log: Path, why: str) -> Path:
    """Copy ``log`` to :data:`KEPT_LOGS` (named for ``why`` and the time); returns the copy."""
    KEPT_LOGS.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in why)[:80]
    copy = KEPT_LOGS / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{log.name}"
    shutil.copyfile(log, copy)
    return copy


def serve_env(sandbox: CloudAPISandbox, **env: str) -> dict[str, str]:
    """The environment of a `gateway serve` answering the sandbox's calls with the echo bot."""
    return {
        "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "WHATSAPP_GRAPH_URL": sandbox.graph_url,
        "GATEWAY_PORT": "0",
        "GATEWAY_MEDIA_ADDRESSES": "127.0.0.1",
        "GATEWAY_BOT": "echo",
        "GATEWAY_API_KEY": API_KEY,
        "GATEWAY_LOG_LEVEL": "INFO",
        # A worker that hangs is sent SIGABRT by the tests: its stacks go to its log.
        "PYTHONFAULTHANDLER": "1",
        # Within the tests' 20 s wait for an exit: a stuck shutdown logs what held it.
        "GATEWAY_SHUTDOWN_TIMEOUT": "15",
        **env,
    }


async def start_serve(env: dict[str, str], log: Path) -> tuple[asyncio.subprocess.Process, str]:
    """A `gateway serve` process with ``env`` (its log in ``log``), and its URL once it serves."""
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            while b"serving webhooks on" not in (line := await proc.stdout.readline()):
                if not line:
                    raise RuntimeError(f"gateway serve did not start:\n{log.read_text()}")
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, line.decode().split("serving webhooks on ")[1].split("/webhook")[0]


async def start_cluster(tmp: Path, workers: int = 3, **env: str) -> Cluster:
    """Redis, the sandbox, a balancer and ``workers`` worker processes."""
    redis = RedisServer()
    await redis.start()
    sandbox = CloudAPISandbox(
        webhook_url="",
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
    )
    await sandbox.start()
    balancer = RandomBalancer([])
    await balancer.start()
    sandbox.webhook_url = f"{balancer.url}/webhook"
    cluster = Cluster(redis, sandbox, balancer, tmp)
    cluster.env = serve_env(
        sandbox,
        GATEWAY_REDIS_URL=redis.url,
        GATEWAY_LEASE_SECONDS=str(LEASE_SECONDS),
        **env,
    )
    try:
        await asyncio.gather(*(cluster.add_worker() for _ in range(workers)))
    except BaseException:
        await cluster.aclose()
        raise
    return cluster


def actions(cluster: Cluster, call_id: str) -> list[str]:
    """The business actions the sandbox accepted for a call, in order."""
    return [a.action or "" for a in cluster.sandbox.actions(call_id)]


def dump(data: Any) -> str:
    """Readable JSON for assertion messages."""
    return json.dumps(data, indent=1, default=str)
