"""The gateway process: webhook receiver, Graph client and call manager on one aiohttp app."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from . import rtc
from .api import CallsAPI
from .calls import CallManager, SessionFactory
from .config import Settings
from .dashboard import Dashboard
from .graph import GraphClient
from .metrics import Metrics
from .recording import Recordings
from .webhooks import WebhookReceiver

log = logging.getLogger(__name__)


class Gateway:
    """Everything one gateway process runs; ``start()`` serves it, ``aclose()`` ends it."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: SessionFactory | None = None,
        sessions: Callable[[str], SessionFactory] | None = None,
    ) -> None:
        self.settings = settings
        rtc.configure(settings.media_addresses)
        self.metrics = Metrics()
        self.graph = GraphClient(
            base_url=settings.graph_url,
            access_token=settings.access_token.value,
            phone_number_id=settings.phone_number_id,
            transport=self.metrics.graph.transport(),
        )
        self.calls = CallManager(
            self.graph,
            max_calls=settings.max_calls,
            answer_timeout=settings.answer_timeout,
            ring_timeout=settings.ring_timeout,
            media_timeout=settings.media_timeout,
            media_idle_timeout=settings.media_idle_timeout,
            session=session,
        )
        self.webhooks = WebhookReceiver(
            app_secret=settings.app_secret.value,
            verify_token=settings.verify_token.value,
            sink=self.calls.dispatch,
            max_body_bytes=settings.webhook_max_bytes,
        )
        self.metrics.watch(self.calls, self.webhooks)
        self.recordings: Recordings | None = None
        if settings.recordings_dir is not None:
            self.recordings = Recordings(settings.recordings_dir, registry=self.metrics.registry)
            self.calls.observers.append(self.recordings)
        # aiohttp's default 1 MiB body limit is for the calls API; the webhook
        # receiver reads its bodies itself, under its own (lower) cap.
        self.app = web.Application(middlewares=[self.metrics.webhook_middleware()])
        self.webhooks.add_routes(self.app)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self.metrics.handle)
        if settings.api_key is not None:
            CallsAPI(
                self.calls, self.graph, api_key=settings.api_key.value, sessions=sessions
            ).add_routes(self.app)
            if self.recordings is not None:
                self.app.router.add_get("/calls/{call_id}/recording", self.recordings.handle)
            dashboard = Dashboard(
                self.calls,
                self.metrics,
                api_key=settings.api_key.value,
                recordings=self.recordings,
                bot=settings.bot,
            )
            self.calls.observers.append(dashboard)
            dashboard.add_routes(self.app)
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    @property
    def url(self) -> str:
        """Base URL the gateway listens on."""
        return f"http://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Start the call manager and listen for HTTP."""
        await self.calls.start()
        self.metrics.lag.start()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("gateway listening on %s (bot: %s)", self.url, self.settings.bot)

    async def aclose(self) -> None:
        """End every call, stop serving, close the Graph client."""
        await self.calls.aclose()
        if self.recordings is not None:
            await self.recordings.aclose()
        await self.metrics.lag.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.graph.aclose()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "active_calls": len(self.calls.calls)})
