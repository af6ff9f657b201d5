"""The operator page: ``GET /dashboard`` (behind the API key).

Live calls (state, duration, bot, packets, loss), recent calls with their
timeline, transcript and a player for the recording, and the key metrics at a
glance. The page polls ``/dashboard/api/state`` once a second; everything it
shows comes from the call manager and the metrics registry.

Browsers cannot put a bearer token on a page load or an ``<audio>`` request,
so these routes take the API key either as ``Authorization: Bearer <key>`` or
as the password of HTTP Basic auth (any user name): the browser asks once.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections import OrderedDict
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..metrics import Metrics
from ..metrics.calls import sender_counts

if TYPE_CHECKING:
    from ..calls import Call, CallManager, CallRecord
    from ..recording import Recordings

_STATIC = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}
RECENT = 50


class Dashboard:
    """Routes of the operator page; a call observer keeping ended calls' media figures."""

    def __init__(
        self,
        calls: CallManager,
        metrics: Metrics,
        *,
        api_key: str,
        recordings: Recordings | None = None,
        bot: str = "",
    ) -> None:
        self.calls = calls
        self.metrics = metrics
        self.recordings = recordings
        self.bot = bot
        self._api_key = api_key
        self._media: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._bots: dict[str, str] = {}
        self.started = time.time()

    def add_routes(self, app: web.Application) -> None:
        """Register the page, its assets, its state API and the recording player's route."""
        app.middlewares.append(self._auth)
        app.router.add_get("/dashboard", self.page)
        app.router.add_get("/dashboard/static/{name}", self.static)
        app.router.add_get("/dashboard/api/state", self.state)
        app.router.add_get("/dashboard/calls/{call_id}/recording", self.recording)

    # --- CallObserver ----------------------------------------------------------------

    def call_started(self, call: Call) -> None:
        pass

    def call_answered(self, call: Call) -> None:
        pass

    def call_refused(self, call_id: str, reason: str) -> None:
        pass

    def call_ended(self, call: Call) -> None:
        self._media[call.id] = {**media_figures(call), "bot": bot_name(call, self.bot)}
        while len(self._media) > RECENT * 2:
            self._media.popitem(last=False)

    # --- HTTP -----------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/dashboard" or request.path.startswith("/dashboard/"):
            if not self._authorized(request.headers.get("Authorization", "")):
                return web.Response(
                    status=401,
                    text="the dashboard needs the gateway's API key",
                    headers={"WWW-Authenticate": 'Basic realm="gateway dashboard"'},
                )
        return await handler(request)

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return False
        else:
            return False
        return hmac.compare_digest(given.encode(), self._api_key.encode())

    async def page(self, request: web.Request) -> web.Response:
        """``GET /dashboard``."""
        text = resources.files(__package__).joinpath("static/dashboard.html").read_text()
        return web.Response(text=text, content_type="text/html", headers=_NO_STORE)

    async def static(self, request: web.Request) -> web.Response:
        """The page's CSS and JavaScript."""
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        text = resources.files(__package__).joinpath(f"static/{name}").read_text()
        return web.Response(text=text, content_type=_STATIC[name])

    async def recording(self, request: web.Request) -> web.StreamResponse:
        """The recording, for the page's player (same file as ``/calls/{id}/recording``)."""
        if self.recordings is None:
            raise web.HTTPNotFound(text="recordings are off (GATEWAY_RECORDINGS_DIR)")
        return await self.recordings.handle(request)

    async def state(self, request: web.Request) -> web.Response:
        """``GET /dashboard/api/state``: what the page shows, as JSON."""
        now = time.time()
        active = [self._active(call, now) for call in list(self.calls.calls.values())]
        recent = [self._recent(r) for r in list(reversed(self.calls.history.values()))[:RECENT]]
        return web.json_response(
            {"now": now, "summary": self._summary(now), "active": active, "recent": recent},
            headers=_NO_STORE,
        )

    # --- what the page shows -------------------------------------------------------------

    def _summary(self, now: float) -> dict[str, Any]:
        m = self.metrics.summary()
        received = m.get("gateway_rtp_received_packets_total", 0.0)
        lost = m.get("gateway_rtp_lost_packets_total", 0.0)
        return {
            "active": m.get("gateway_calls_active", 0),
            "capacity": self.calls.max_calls,
            "ended": m.get("gateway_calls_total", 0),
            "rejected": m.get("gateway_calls_rejected_total", 0),
            "call_seconds": m.get("gateway_call_seconds_total", 0),
            "cpu_seconds": m.get("process_cpu_seconds_total", 0),
            "rss_bytes": m.get("process_resident_memory_bytes", 0),
            "loop_lag_p99_ms": 1000 * m.get("gateway_event_loop_lag_p99_seconds", 0),
            "loss_percent": 100 * lost / (received + lost) if received + lost else 0.0,
            "response_p50_ms": _histogram_quantile(self.metrics, "gateway_response_seconds", 0.5),
            "packets_in": received,
            "packets_out": m.get("gateway_rtp_sent_packets_total", 0),
            "uptime_seconds": now - self.started,
            "recordings": self.recordings is not None,
        }

    def _active(self, call: Call, now: float) -> dict[str, Any]:
        record = call.record
        return {
            **_basics(record),
            "duration": now - (record.accepted_at or record.created_at),
            "bot": bot_name(call, self.bot),
            **media_figures(call),
        }

    def _recent(self, record: CallRecord) -> dict[str, Any]:
        recording = None
        if record.recording and self.recordings is not None:
            recording = f"/dashboard/calls/{record.call_id}/recording"
        return {
            **_basics(record),
            "duration": (record.ended_at - record.accepted_at)
            if record.ended_at and record.accepted_at
            else None,
            **self._media.get(record.call_id, {}),
            "end_reason": record.end_reason,
            "terminate_status": record.terminate_status,
            "billed_seconds": record.duration,
            "timeline": timeline(record),
            "transcript": transcript_of(record),
            "recording": recording,
        }


_NO_STORE = {"Cache-Control": "no-store"}


def _basics(record: CallRecord) -> dict[str, Any]:
    return {
        "call_id": record.call_id,
        "direction": str(record.direction),
        "peer": record.peer,
        "name": record.contact_name,
        "state": str(record.state),
        "created_at": record.created_at,
    }


def bot_name(call: Call, default: str) -> str:
    """The bot on this call: its class, or the gateway's default bot name."""
    bot = getattr(call.session, "bot", None)
    return type(bot).__name__ if bot is not None else default


def media_figures(call: Call) -> dict[str, Any]:
    """Packets both ways, losses and jitter of one call (its media path's own counters)."""
    packets_in = lost = late = 0
    jitter = 0.0
    if call.inbound is not None:
        s = call.inbound.stats
        packets_in, lost, late = s.packets, s.lost, s.late
        jitter = call.inbound.jitter_seconds
    packets_out, _ = sender_counts(call)
    return {
        "packets_in": packets_in,
        "packets_out": packets_out,
        "lost": lost,
        "late": late,
        "loss_percent": 100 * lost / (packets_in + lost) if packets_in + lost else 0.0,
        "jitter_ms": 1000 * jitter,
    }


def transcript_of(record: CallRecord) -> list[dict[str, Any]]:
    """The conversation a bot kept on the record (``record.conversation``), if any."""
    turns = getattr(record, "conversation", None)
    return list(turns) if isinstance(turns, list) else []


def timeline(record: CallRecord) -> list[dict[str, Any]]:
    """What happened on a call, in order, from its record."""
    started = "connect webhook (offer)" if record.direction == "USER_INITIATED" else "dialed"
    events: list[dict[str, Any]] = [{"at": record.created_at, "what": f"call started: {started}"}]
    if record.statuses:
        events.append({"at": None, "what": "WhatsApp statuses: " + ", ".join(record.statuses)})
    if record.accepted_at:
        events.append({"at": record.accepted_at, "what": "answered"})
    for turn in transcript_of(record):
        if turn.get("role") == "event":
            events.append({"at": turn.get("at"), "what": f"bot: {turn.get('text', '')}"})
    if record.ended_at:
        events.append({"at": record.ended_at, "what": f"ended: {record.end_reason or '-'}"})
    if record.terminate_status:
        billed = f", {record.duration} s" if record.duration is not None else ""
        errors = f", errors {record.errors}" if record.errors else ""
        events.append(
            {"at": record.end_time, "what": f"WhatsApp: {record.terminate_status}{billed}{errors}"}
        )
    return events


def _histogram_quantile(metrics: Metrics, name: str, q: float) -> float | None:
    """A quantile estimate (ms) from a histogram's buckets, as PromQL's histogram_quantile."""
    buckets = metrics.buckets(name)
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return 1000 * lower
            share = (rank - below) / (count - below) if count > below else 0.0
            return 1000 * (lower + (bound - lower) * share)
        lower, below = bound, count
    return None
