"""A stand-in for Meta's side of the Cloud API: a fake Graph API and webhook delivery.

The fake Graph API answers ``POST /<PHONE_NUMBER_ID>/calls`` the way Meta does
(bodies, error bodies, the checks Meta makes on SDP and call state), records every
request for inspection, and can be told to fail the next requests with any
status and Cloud API code. Webhooks go to the gateway signed with the app secret,
exactly as Meta signs them. Simulated users (:mod:`gateway.sandbox.user`) plug in
to place and receive calls; this module knows them only as the ``Callee`` and
``SandboxCall`` protocols (:mod:`.parties`), so the import goes one way (user -> cloud).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from ..webhooks import SIGNATURE_HEADER, sign
from . import payloads
from .actions import connect_refusal
from .failures import Failure, FailurePlan, InjectedFailure
from .parties import Callee, SandboxCall
from .permissions import PermissionStore
from .timeline import Timeline

log = logging.getLogger(__name__)

GRAPH_VERSION = "v23.0"
ACTIONS = ("connect", "pre_accept", "accept", "reject", "terminate")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake Graph API received, and what it answered."""

    at: float
    method: str
    path: str
    body: Any
    status: int
    action: str | None = None


class CloudAPISandbox:
    """The fake Graph API server plus signed webhook delivery to one gateway."""

    def __init__(
        self,
        *,
        webhook_url: str,
        app_secret: str,
        access_token: str,
        phone_number_id: str = "106540352242922",
        business_number: str = "15550783881",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.webhook_url = webhook_url
        self.app_secret = app_secret
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.business_number = business_number
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        # HTTP status of every webhook delivery the gateway answered, and how often.
        self.webhook_statuses: Counter[int] = Counter()
        self.timeline = Timeline()
        self.calls: dict[str, SandboxCall] = {}
        self.users: dict[str, Callee] = {}
        self.permissions = PermissionStore()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failures = FailurePlan()
        # Extra routes served beside the fake Graph API (e.g. the browser phone).
        self.route_hooks: list[Callable[[web.Application], None]] = []
        self._runner: web.AppRunner | None = None
        self._http: httpx.AsyncClient | None = None
        # Like Meta, retry a webhook the gateway could not be reached for (e.g. it is
        # restarting) for up to this many seconds; 0 delivers once.
        self.redelivery_seconds = 0.0

    # --- lifecycle -------------------------------------------------------------

    @property
    def graph_url(self) -> str:
        """Base URL to give the gateway as ``WHATSAPP_GRAPH_URL``."""
        return f"http://{self.host}:{self.port}/{GRAPH_VERSION}"

    async def start(self) -> None:
        """Start serving the fake Graph API."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/{version}/{pnid}/calls", self._handle_calls)
        app.router.add_post("/{version}/{pnid}/messages", self._handle_messages)
        app.router.add_get("/{version}/{pnid}/call_permissions", self._handle_permissions)
        for hook in self.route_hooks:
            hook(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._http = httpx.AsyncClient(timeout=20.0)

    async def aclose(self) -> None:
        """Hang up every simulated call and stop serving."""
        await asyncio.gather(
            *(c.close() for c in list(self.calls.values())), return_exceptions=True
        )
        if self._http is not None:
            await self._http.aclose()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- test controls -----------------------------------------------------------

    def fail_next(
        self,
        action: str,
        *,
        code: int,
        message: str = "(#error) sandbox-injected failure",
        status: int = 400,
        details: str | None = None,
        times: int = 1,
        how: Failure = Failure.GRAPH_ERROR,
        retry_after: float | None = None,
        delay: float = 30.0,
    ) -> None:
        """Make the next ``times`` requests for ``action`` fail like Meta would.

        ``how`` picks the way (see :class:`Failure`); ``retry_after`` adds a
        ``Retry-After`` header (seconds, e.g. with ``status=429``); ``delay`` is
        how long a :attr:`Failure.TIMEOUT` keeps the client waiting. A failed
        request has no effect on the call, as a refused one has none at Meta.
        """
        self._failures.add(
            action, InjectedFailure(status, code, message, details, times, how, retry_after, delay)
        )

    def actions(self, call_id: str | None = None) -> list[RecordedRequest]:
        """Recorded ``/calls`` requests that succeeded, optionally for one call."""
        return [
            r
            for r in self.requests
            if r.action
            and r.status == 200
            and (call_id is None or (isinstance(r.body, dict) and r.body.get("call_id") == call_id))
        ]

    # --- webhooks ------------------------------------------------------------------

    async def deliver(self, *changes: dict[str, Any], signed: bool = True) -> httpx.Response:
        """POST one webhook delivery carrying ``changes`` to the gateway."""
        body = json.dumps(payloads.envelope(list(changes))).encode()
        return await self.post_raw(body, signature=sign(body, self.app_secret) if signed else None)

    async def post_raw(self, body: bytes, *, signature: str | None) -> httpx.Response:
        """POST arbitrary bytes to the webhook (for bad-input tests)."""
        assert self._http is not None, "sandbox not started"
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        give_up = time.monotonic() + self.redelivery_seconds
        while True:
            try:
                # The URL is read on every attempt: a restarted gateway may listen elsewhere.
                response = await self._http.post(self.webhook_url, content=body, headers=headers)
            except httpx.TransportError:
                if time.monotonic() >= give_up:
                    raise
                await asyncio.sleep(0.1)
                continue
            self.webhook_statuses[response.status_code] += 1
            return response

    def new_call_id(self) -> str:
        """A fresh id in Meta's format."""
        return "wacid." + secrets.token_urlsafe(24)

    # --- the fake Graph API ------------------------------------------------------------

    def _record(self, request: web.Request, body: Any, status: int, action: str | None) -> None:
        self.requests.append(
            RecordedRequest(time.time(), request.method, request.path, body, status, action)
        )

    def _error(
        self,
        request: web.Request,
        body: Any,
        action: str | None,
        status: int,
        code: int,
        message: str,
        details: str | None = None,
    ) -> web.Response:
        self._record(request, body, status, action)
        log.info("graph sandbox: %s -> %d (code %d): %s", action, status, code, message)
        return web.json_response(
            payloads.graph_error(code, message, details=details), status=status
        )

    async def _read(self, request: web.Request) -> tuple[Any, web.Response | None]:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.access_token}":
            return None, self._error(
                request,
                None,
                None,
                401,
                190,
                "Invalid OAuth access token - Cannot parse access token",
            )
        if request.match_info["pnid"] != self.phone_number_id:
            return None, self._error(
                request,
                None,
                None,
                400,
                100,
                f"Unsupported post request. Object with ID "
                f"'{request.match_info['pnid']}' does not exist",
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, self._error(request, None, None, 400, 100, "Invalid JSON body")
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return body, self._error(
                request, body, None, 400, 100, "(#100) The parameter messaging_product is required."
            )
        return body, None

    async def _handle_calls(self, request: web.Request) -> web.Response:
        body, refused = await self._read(request)
        if refused is not None:
            return refused
        action = body.get("action")
        if action not in ACTIONS:
            return self._error(
                request, body, None, 400, 100, f"(#100) Invalid parameter: action {action!r}"
            )
        failure = self._failures.take(action)
        if failure is not None:
            return await failure.answer(
                request,
                action,
                record=lambda status: self._record(request, body, status, action),
                error=lambda: self._error(
                    request,
                    body,
                    action,
                    failure.status,
                    failure.code,
                    failure.message,
                    failure.details,
                ),
            )
        if action == "connect":
            return self._connect(request, body)
        call = self.calls.get(str(body.get("call_id", "")))
        if call is None:
            return self._error(
                request,
                body,
                action,
                400,
                100,
                f"(#100) Invalid parameter: call_id {body.get('call_id')!r}",
            )
        problem = call.check_action(action, body)
        if problem is not None:
            return self._error(request, body, action, 400, 100, "(#100) Invalid parameter", problem)
        self._record(request, body, 200, action)
        self.timeline.add(f"graph: {action} for {call.user.name}'s call")
        call.on_action(action, body)
        return web.json_response({"messaging_product": "whatsapp", "success": True})

    def _connect(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        refusal = connect_refusal(body, self.permissions, self.users, self.calls.values())
        if refusal is not None:
            code, message, details = refusal
            return self._error(request, body, "connect", 400, code, message, details)
        to, offer = body["to"], body["session"]["sdp"]
        callback = body.get("biz_opaque_callback_data")
        user = self.users[to]
        call_id = self.new_call_id()
        self._record(request, body, 200, "connect")
        self.timeline.add(f"graph: connect to {user.name} ({to})")
        user.receive_call(call_id, offer, callback)
        return web.json_response({"messaging_product": "whatsapp", "calls": [{"id": call_id}]})

    async def _handle_messages(self, request: web.Request) -> web.Response:
        body, refused = await self._read(request)
        if refused is not None:
            return refused
        interactive = body.get("interactive")
        if body.get("type") != "interactive" or not isinstance(interactive, dict):
            return self._error(
                request, body, None, 400, 100, "(#100) Only interactive messages in this sandbox"
            )
        if interactive.get("type") != "call_permission_request":
            return self._error(request, body, None, 400, 100, "(#100) Unsupported interactive type")
        to = body.get("to")
        if not isinstance(to, str) or not to:
            return self._error(
                request, body, None, 400, 100, "(#100) The parameter to is required."
            )
        refusal = self.permissions.request_refusal(to)
        if refusal is not None:
            return self._error(
                request, body, None, 400, 138009, "Call permission request limit reached", refusal
            )
        self.permissions.record_request(to)
        message_id = "wamid." + secrets.token_urlsafe(18)
        self._record(request, body, 200, None)
        self.timeline.add(f"graph: call permission request to {to}")
        user = self.users.get(to)
        if user is not None and user.permission_reply != "ignore":
            task = asyncio.create_task(self._reply_permission(user, message_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": message_id}],
            }
        )

    async def _reply_permission(self, user: Callee, message_id: str) -> None:
        accept = user.permission_reply.startswith("accept")
        permanent = user.permission_reply == "accept_permanent"
        if accept:
            self.permissions.grant(user.wa_id, permanent=permanent)
        self.timeline.add(f"{user.name} {'accepts' if accept else 'declines'} call permission")
        await self.deliver(
            payloads.permission_reply(
                user=user.wa_id,
                user_name=user.name,
                business=self.business_number,
                phone_number_id=self.phone_number_id,
                context_id=message_id,
                accept=accept,
                permanent=permanent,
            )
        )

    async def _handle_permissions(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.access_token}":
            return self._error(request, None, None, 401, 190, "Invalid OAuth access token")
        wa_id = request.query.get("user_wa_id")
        if not wa_id:
            return self._error(
                request, None, None, 400, 100, "(#100) The parameter user_wa_id is required."
            )
        self._record(request, dict(request.query), 200, None)
        return web.json_response(self.permissions.as_graph(wa_id))
