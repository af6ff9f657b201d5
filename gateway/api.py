"""The HTTP API for backends: place, list, inspect and hang up calls; call permissions.

Protected by a bearer API key (``GATEWAY_API_KEY``); without a key the API is
not served at all. ``/openapi.json`` describes it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from .calls import CallManager, SessionFactory
from .errors import BotError, CallError, GatewayError, GraphAPIError, UnavailableError
from .graph import GraphClient
from .logsafe import clip
from .routing import Router

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(exc: GatewayError) -> dict[str, Any]:
    """The API's JSON error shape, carrying the Cloud API code when there is one."""
    error: dict[str, Any] = {"message": exc.message, "type": type(exc).__name__}
    if exc.code is not None:
        error["code"] = exc.code
    if isinstance(exc, GraphAPIError):
        error["graph_status"] = exc.status
        if exc.details:
            error["details"] = exc.details
        if exc.hint:
            error["hint"] = exc.hint
    return {"error": error}


def _graph_status(exc: GraphAPIError) -> int:
    # Cloud API client errors are the caller's to fix; anything else is upstream trouble.
    return 502 if exc.retryable else 400 if exc.status != 401 else 502


class CallsAPI:
    """Route handlers; ``sessions`` turns a bot name into a session factory.

    Requests about one call go through ``router``, so any worker of a cluster
    answers for a call that runs on another.
    """

    def __init__(
        self,
        calls: CallManager,
        graph: GraphClient,
        router: Router,
        *,
        api_key: str,
        sessions: Callable[[str], SessionFactory] | None = None,
    ) -> None:
        self.calls = calls
        self.graph = graph
        self.router = router
        self._api_key = api_key
        self._sessions = sessions

    def add_routes(self, app: web.Application) -> None:
        """Register the API (and its auth middleware) on ``app``."""
        app.middlewares.append(self._auth)
        app.middlewares.append(self._unavailable)
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_post("/calls", self.place_call)
        app.router.add_get("/calls", self.list_calls)
        app.router.add_get("/calls/{call_id}", self.get_call)
        app.router.add_delete("/calls/{call_id}", self.hang_up)
        app.router.add_post("/permissions/{wa_id}/request", self.request_permission)
        app.router.add_get("/permissions/{wa_id}", self.get_permission)

    @web.middleware
    async def _unavailable(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except UnavailableError as exc:
            return web.json_response(error_body(exc), status=503, headers={"Retry-After": "1"})

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/calls") or path.startswith("/permissions"):
            header = request.headers.get("Authorization", "")
            expected = f"Bearer {self._api_key}"
            if not hmac.compare_digest(header.encode(), expected.encode()):
                return web.json_response(
                    {"error": {"message": "missing or wrong API key", "type": "AuthError"}},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3 document of this API."""
        text = resources.files("gateway").joinpath("openapi.json").read_text()
        return web.json_response(json.loads(text))

    async def place_call(self, request: web.Request) -> web.Response:
        """``POST /calls``: call a user (optionally asking permission when missing)."""
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _bad("body must be JSON")
        if not isinstance(body, dict) or not isinstance(body.get("to"), str) or not body["to"]:
            return _bad("'to' (the user's WhatsApp number) is required")
        to = body["to"]
        session = None
        try:
            if body.get("bot") is not None:
                if self._sessions is None:
                    return _bad("this gateway does not run bots")
                session = self._sessions(str(body["bot"]))
            await self.router.admit_new_call()
            call = await self.calls.place_call(
                to,
                biz_opaque_callback_data=body.get("biz_opaque_callback_data"),
                ring_timeout=body.get("ring_timeout"),
                session=session,
            )
        except GraphAPIError as exc:
            if exc.code == 138006 and body.get("request_permission"):
                message_id = await self.graph.request_permission(to, body.get("permission_text"))
                log.info(
                    "no permission to call %s: permission request %s sent",
                    clip(to, 40),
                    clip(message_id, 80),
                )
                return web.json_response(
                    {"permission_requested": True, "message_id": message_id, **error_body(exc)},
                    status=202,
                )
            return web.json_response(error_body(exc), status=_graph_status(exc))
        except BotError as exc:
            return web.json_response(error_body(exc), status=400)
        except CallError as exc:
            return web.json_response(error_body(exc), status=503)
        except GatewayError as exc:
            return web.json_response(error_body(exc), status=400)
        return web.json_response(call.record.as_dict(), status=201)

    async def list_calls(self, request: web.Request) -> web.Response:
        """``GET /calls``: active calls and recently ended ones."""
        return web.json_response(await self.router.list_calls())

    async def get_call(self, request: web.Request) -> web.Response:
        """``GET /calls/{id}``."""
        call_id = request.match_info["call_id"]
        record = await self.router.call_record(call_id)
        if record is None:
            return web.json_response({"error": {"message": f"no call {call_id}"}}, status=404)
        return web.json_response(record)

    async def hang_up(self, request: web.Request) -> web.Response:
        """``DELETE /calls/{id}``: terminate through the Cloud API and close."""
        call_id = request.match_info["call_id"]
        record = await self.router.hang_up(call_id)
        if record is None:
            return web.json_response(
                {"error": {"message": f"no active call {call_id}"}}, status=404
            )
        return web.json_response(record)

    async def request_permission(self, request: web.Request) -> web.Response:
        """``POST /permissions/{wa_id}/request``: send a call permission request."""
        text = None
        if request.can_read_body:
            try:
                body = await request.json()
                text = body.get("text") if isinstance(body, dict) else None
            except json.JSONDecodeError:
                return _bad("body must be JSON")
        try:
            message_id = await self.graph.request_permission(request.match_info["wa_id"], text)
        except GraphAPIError as exc:
            return web.json_response(error_body(exc), status=_graph_status(exc))
        return web.json_response({"message_id": message_id}, status=202)

    async def get_permission(self, request: web.Request) -> web.Response:
        """``GET /permissions/{wa_id}``: the Cloud API's view plus the last reply seen."""
        wa_id = request.match_info["wa_id"]
        try:
            permission = await self.graph.get_permission(wa_id)
        except GraphAPIError as exc:
            return web.json_response(error_body(exc), status=_graph_status(exc))
        reply = await self.router.permission_reply(wa_id)
        return web.json_response(
            {
                "wa_id": wa_id,
                "status": permission.status,
                "expiration_time": permission.expiration_time,
                "can_call": permission.can_call,
                "can_request": permission.can_request,
                "last_reply": reply,
            }
        )


def _bad(message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "BadRequest"}}, status=400)
