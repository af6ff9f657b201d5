"""A business backend for tests of the events the gateway sends it (``GATEWAY_EVENTS_URL``):
an aiohttp receiver that checks each body's signature as the README tells a backend to."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

from aiohttp import web

from gateway.outbox import SIGNATURE_HEADER

SECRET = "events-secret"


class Receiver:
    """A business backend: verifies the signature, answers 503 while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.events: list[dict[str, Any]] = []  # acknowledged (answered 200)
        self.refused = 0
        self.refused_events: list[dict[str, Any]] = []  # answered 503 (down)
        self.bad_signatures = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/events"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        # The README's receiver check, as a backend would write it.
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.down:
            self.refused += 1
            self.refused_events.append(json.loads(body))
            return web.Response(status=503)
        self.events.append(json.loads(body))
        return web.Response(status=204)

    def of_type(self, kind: str, call_id: str | None = None) -> list[dict[str, Any]]:
        """The events of ``kind`` acknowledged (of call ``call_id`` only, if given)."""
        return [
            e for e in self.events if e["type"] == kind and call_id in (None, e["call"]["call_id"])
        ]


async def wait_for(check: Any, seconds: float = 20) -> None:
    """Wait until ``check()`` is true (a TimeoutError after ``seconds``)."""
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.05)
