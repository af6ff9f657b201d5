"""The Redis client every part of the cluster uses: fail fast instead of hanging."""

from __future__ import annotations

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A client that fails fast (one immediate retry) instead of hanging on an outage.

    ``blocking`` clients have no socket timeout: they serve ``BLOCK``/``BLPOP``
    reads whose callers bound them with their own timeout.
    """
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=None if blocking else 2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 1),
    )
