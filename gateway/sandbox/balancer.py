"""A tiny HTTP load balancer for the sandbox: each request goes to a random backend.

It stands for what an operator puts in front of a cluster: Meta's webhooks (and a
backend's API requests) reach any worker, not the one that holds the call. A
backend that refuses the connection is skipped, as a health-checking balancer would.
"""

from __future__ import annotations

import logging
import random

import httpx
from aiohttp import web

log = logging.getLogger(__name__)

# Hop-by-hop headers a proxy must not pass on.
_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class RandomBalancer:
    """Forwards every request to a random URL of ``backends`` (editable while running)."""

    def __init__(self, backends: list[str], *, host: str = "127.0.0.1", seed: int = 0) -> None:
        self.backends = backends
        self.host = host
        self.port = 0
        self.sent: dict[str, int] = {}
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        """Base URL clients use instead of a worker's."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen on a free port."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._http = httpx.AsyncClient(timeout=30.0)

    async def aclose(self) -> None:
        """Stop listening."""
        if self._http is not None:
            await self._http.aclose()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        candidates = list(self.backends)
        self._random.shuffle(candidates)
        for backend in candidates:
            try:
                answer = await self._http.request(
                    request.method,
                    backend + request.path_qs,
                    content=body,
                    headers=headers,
                )
            except httpx.ConnectError:
                log.info("balancer: %s refused the connection; trying another", backend)
                continue
            self.sent[backend] = self.sent.get(backend, 0) + 1
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            out.pop("content-encoding", None)
            return web.Response(status=answer.status_code, body=answer.content, headers=out)
        return web.json_response({"error": "no backend reachable"}, status=502)
