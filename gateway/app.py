"""The gateway process: webhook receiver, Graph client and call manager on one aiohttp app."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from . import rtc
from .calls import CallManager, SessionFactory
from .config import Settings
from .errors import StoreError, UnavailableError
from .graph import GraphClient
from .heap import HeapTrimmer
from .media import tickread
from .metrics import Metrics, process_cpu_seconds, process_rss_bytes
from .routing import LocalRouter, Router
from .shutdown import stop_if_cancelled
from .store import SQLiteStore, Store
from .warmup import warm_up
from .webhooks import WebhookReceiver

# What a setting turns on (the HTTP API and dashboard, recordings, business events,
# the cluster) is imported only when it is on: a gateway weighs what it runs.
if TYPE_CHECKING:
    from .cluster.router import ClusterRouter
    from .outbox import EventOutbox
    from .recording import Recordings

log = logging.getLogger(__name__)

# How often old records are pruned (also once at start-up).
PRUNE_INTERVAL = 3600.0
# Seconds a closing gateway gives the HTTP requests in progress (aiohttp's default:
# 60). Bounded because aiohttp drops what a connection sends once its server shuts
# down: a webhook whose body had not fully arrived would be waited for to the end.
# Meta delivers a webhook cut off here again (to another worker of a cluster).
HTTP_SHUTDOWN_GRACE = 3.0


def _default_store(settings: Settings, worker_id: str | None) -> Store:
    # One process keeps its state in SQLite under GATEWAY_DATA_DIR. A cluster worker
    # keeps it in the cluster's Redis, where every worker reads it.
    if settings.redis_url is not None and worker_id is not None:
        from .cluster.store import RedisStore

        return RedisStore(settings.redis_url.value, worker_id)
    return SQLiteStore(settings.data_dir)


class Gateway:
    """Everything one gateway process runs; ``start()`` serves it, ``aclose()`` ends it."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: SessionFactory | None = None,
        sessions: Callable[[str], SessionFactory] | None = None,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        # A cluster worker's id (a new one at every start), None in single mode.
        self.worker_id: str | None = None
        if settings.redis_url is not None:
            from .cluster.node import new_worker_id

            self.worker_id = new_worker_id()
        self.store: Store = store if store is not None else _default_store(settings, self.worker_id)
        rtc.configure(settings.media_addresses)
        tickread.set_read_mode(settings.media_read)
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
            store=self.store,
            opus_complexity=settings.opus_complexity,
        )
        # The cluster's router when GATEWAY_REDIS_URL is set, else None.
        self.cluster: ClusterRouter | None = None
        self.router = self._router(settings)
        self.webhooks = WebhookReceiver(
            app_secret=settings.app_secret.value,
            verify_token=settings.verify_token.value,
            sink=self.router.deliver,
            max_body_bytes=settings.webhook_max_bytes,
        )
        self.metrics.watch(self.calls, self.webhooks)
        # Ended calls' memory goes back to the OS (glibc keeps freed heap resident).
        self.heap = HeapTrimmer()
        self.calls.observers.append(self.heap)
        self.recordings: Recordings | None = None
        if settings.recordings_dir is not None:
            from .recording import Recordings

            self.recordings = Recordings(settings.recordings_dir, registry=self.metrics.registry)
            self.calls.observers.append(self.recordings)
        self.outbox: EventOutbox | None = None
        if settings.events_url is not None and settings.events_secret is not None:
            from .outbox import EventOutbox

            self.outbox = EventOutbox(
                self.store,
                url=settings.events_url,
                secret=settings.events_secret.value,
                max_age=settings.events_max_age,
                registry=self.metrics.registry,
            )
            self.calls.observers.append(self.outbox)
            if self.cluster is not None:
                # A lost worker's calls get their call.ended from this worker's reaper.
                self.cluster.node.reaper.events = self.outbox
        # aiohttp's default 1 MiB body limit is for the calls API; the webhook
        # receiver reads its bodies itself, under its own (lower) cap.
        self.app = web.Application(middlewares=[self.metrics.webhook_middleware()])
        self.webhooks.add_routes(self.app)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        if self.cluster is not None:
            self.app.router.add_get("/cluster", self._cluster)
            self.metrics.registry.register(self.cluster)
        self.app.router.add_get("/metrics", self.metrics.handle)
        if settings.api_key is not None:
            from .api import CallsAPI
            from .dashboard import Dashboard

            CallsAPI(
                self.calls,
                self.graph,
                self.router,
                api_key=settings.api_key.value,
                sessions=sessions,
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
        self._pruner: asyncio.Task[None] | None = None
        self.port = settings.port
        self.draining = False
        self._ready = False

    def _router(self, settings: Settings) -> Router:
        # One process by default; a worker of a cluster when given a Redis.
        if settings.redis_url is None:
            return LocalRouter(self.calls)
        from .cluster.node import WorkerNode
        from .cluster.router import ClusterRouter
        from .cluster.store import RedisStore

        node = WorkerNode(
            settings.redis_url.value,
            self.calls,
            self.graph,
            lease_seconds=settings.lease_seconds,
            figures=self._figures,
            worker_id=self.worker_id,
            store=self.store if isinstance(self.store, RedisStore) else None,
        )
        self.cluster = ClusterRouter(
            node,
            self.calls,
            cluster_max_calls=settings.cluster_max_calls,
            answer_timeout=settings.answer_timeout,
        )
        return self.cluster

    def _figures(self) -> dict[str, float]:
        # What a cluster worker publishes so that /cluster can add workers up.
        calls = self.metrics.calls
        live = calls.live_call_seconds(time.time()) if calls is not None else 0.0
        return {
            "cpu_seconds": process_cpu_seconds(),
            "call_seconds": (calls.call_seconds_ended if calls is not None else 0.0) + live,
            "rss_bytes": float(process_rss_bytes()),
        }

    @property
    def url(self) -> str:
        """Base URL the gateway listens on."""
        return f"http://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Open the store, recover from a dead predecessor, start the call manager, listen."""
        await self.store.open()
        try:
            await self._prune()
            orphans = await self.calls.start()
        except BaseException:
            await self.store.close()
            raise
        self._pruner = asyncio.create_task(self._prune_forever(), name="store-prune")
        if self.outbox is not None:
            # The calls a dead process left live, ended at start-up: the backend gets
            # their call.ended as it would have from that process (same id; WhatsApp's
            # terminate record if it comes within the wait), from the outbox's own
            # background tasks, so nothing here waits for it.
            for record in orphans:
                self.outbox.ended(record)
            await self.outbox.start()
        await self.router.start()
        self.metrics.lag.start()
        warm_up()  # before the first webhook can come: not on the first caller's time
        if self.settings.metrics_port is not None:
            await self.metrics.serve(self.settings.host, self.settings.metrics_port)
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_GRACE
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.settings.host,
            self.settings.port,
            reuse_port=self.settings.reuse_port or None,
        )
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready = True
        log.info("gateway listening on %s (bot: %s)", self.url, self.settings.bot)

    async def drain(self) -> None:
        """Stop taking calls; wait until the live ones end (``GATEWAY_DRAIN_TIMEOUT`` at most).

        ``/readyz`` answers 503 from now on so load balancers stop sending new
        work; webhooks for live calls are still handled. Calls left when the
        timeout passes are ended by :meth:`aclose` (with ``terminate``).
        """
        timeout = self.settings.drain_timeout
        self.draining = True
        self.calls.accepting = False
        log.info("draining: %d call(s) live, waiting up to %.0f s", len(self.calls.calls), timeout)
        try:
            async with asyncio.timeout(timeout):
                await self.calls.wait_idle()
            log.info("drained: no call left")
        except TimeoutError:
            log.warning("drain timeout: ending %d call(s) now", len(self.calls.calls))

    async def aclose(self) -> None:
        """End every call, stop serving, close the Graph client and the store."""
        self.draining = True
        self.calls.accepting = False
        await self.calls.aclose()
        await self.heap.aclose()
        if self.recordings is not None:
            await self.recordings.aclose()
        await self.router.aclose()
        await self.metrics.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.graph.aclose()
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
        # Webhooks that came in during shutdown may still have queued record writes.
        await self.calls.flush()
        if self.outbox is not None:
            await self.outbox.aclose()  # what is not delivered stays in the store
        await self.store.close()

    async def _prune(self) -> None:
        before = time.time() - self.settings.retention_days * 86400
        try:
            removed = await self.store.prune(before)
        except StoreError as exc:
            log.error("pruning old records failed: %s", exc)
            return
        if removed:
            log.info("pruned %d item(s) older than %d days", removed, self.settings.retention_days)

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            await self._prune()
            stop_if_cancelled()  # the store may be any library

    async def _healthz(self, request: web.Request) -> web.Response:
        # Liveness: the process answers. Readiness (may it get new work) is /readyz.
        return web.json_response({"status": "ok", **self.router.status()})

    async def _cluster(self, request: web.Request) -> web.Response:
        try:
            assert self.cluster is not None
            overview = await self.cluster.overview()
        except UnavailableError as exc:
            return web.json_response({"error": exc.message}, status=503)
        return web.json_response(overview)

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self._ready and not self.draining
        status = "ready" if ready else "draining" if self.draining else "starting"
        return web.json_response(
            {"status": status, **self.router.status()}, status=200 if ready else 503
        )
