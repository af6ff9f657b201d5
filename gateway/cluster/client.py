"""The Redis client every part of the cluster uses: fail fast instead of hanging, and
never lose a cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A client that fails fast (one immediate retry) instead of hanging on an outage.

    ``blocking`` clients have no socket timeout: they serve ``BLOCK``/``BLPOP``
    reads whose callers bound them with their own timeout.
    """
    client = aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=None if blocking else 2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 1),
    )
    pool = client.connection_pool
    pool.connection_class = _KEEPING_CANCELS.get(pool.connection_class, pool.connection_class)
    return client


class _KeepsCancels(AbstractConnection):
    """A connection whose send raises the cancellation Python 3.11 lets it lose.

    With a socket timeout, redis-py sends a command through ``asyncio.wait_for``
    (``send_packed_command`` in redis/asyncio/connection.py), and Python 3.11's
    ``wait_for`` returns the inner result when the task is cancelled in the moment
    the send finishes (``if fut.done(): return fut.result()`` in asyncio/tasks.py;
    rewritten in 3.12). The cancel is then gone, bar the task's ``cancelling()``
    count: a cancelled pipeline returned normally about 4 times in 10 here, and a
    loop cancelled there went back to waiting. Here a cancel that came during the
    send is raised after it, as one that came a moment earlier would have been,
    and the connection is dropped (its reply is still on the way), as redis-py
    drops it then.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        await super().send_packed_command(command, check_health)
        if task is not None and task.cancelling() > cancels:
            await self.disconnect(nowait=True)
            raise asyncio.CancelledError


class _KeepingConnection(_KeepsCancels, Connection):
    pass


class _KeepingSSLConnection(_KeepsCancels, SSLConnection):
    pass


class _KeepingUnixConnection(_KeepsCancels, UnixDomainSocketConnection):
    pass


# The connection class redis-py picked for the URL's scheme -> the same, keeping cancels.
_KEEPING_CANCELS: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _KeepingConnection,
    SSLConnection: _KeepingSSLConnection,
    UnixDomainSocketConnection: _KeepingUnixConnection,
}
