"""A private ``redis-server`` for tests, benchmarks and ``gateway cluster``.

Debian's ``redis-server`` (``make redis`` installs it), on a free loopback port,
in its own temporary directory, with persistence off: stopping it loses its data,
which is exactly what the outage tests want.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import ConfigError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process; :meth:`start`, :meth:`stop`, :meth:`restart`."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._dir = tempfile.TemporaryDirectory(prefix="gateway-redis-")
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """``redis://host:port/0``."""
        return f"redis://{self.host}:{self.port}/0"

    async def start(self) -> None:
        """Start it (on the same port as before, if it ran already) and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError("redis-server is not installed: run `make redis` (Debian package)")
        if self.port == 0:
            self.port = free_port(self.host)
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", self._dir.name,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            for _ in range(200):
                if self._proc.returncode is not None:
                    raise ConfigError(f"redis-server exited at start (port {self.port} taken?)")
                try:
                    await client.ping()
                    return
                except (RedisError, OSError):
                    await asyncio.sleep(0.05)
            raise ConfigError("redis-server did not answer within 10 s")
        finally:
            await client.aclose()

    async def stop(self, *, kill: bool = False) -> None:
        """Stop it (``kill``: SIGKILL, as a crash would); its data is gone."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.kill() if kill else proc.terminate()
        await proc.wait()

    async def restart(self) -> None:
        """Stop it and start an empty one on the same port."""
        await self.stop()
        await self.start()

    async def aclose(self) -> None:
        """Stop it and remove its directory."""
        await self.stop()
        self._dir.cleanup()
