"""The Graph API client: the calling actions of the Cloud API, over httpx.

One :class:`GraphClient` per process (it owns one connection pool). Errors come
back as :class:`~gateway.errors.GraphAPIError` with the Cloud API's code. Requests
are retried with backoff only where repeating them is safe: actions on an
existing call are idempotent on Meta's side; placing a call or sending a message
is retried only if the request certainly never left (connect errors, 429).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from .aiohttp_transport import AiohttpTransport
from .errors import GatewayError, GraphAPIError
from .logsafe import clip

log = logging.getLogger(__name__)

MAX_CALLBACK_DATA = 512


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts, backoff and an overall deadline in seconds."""

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 2.0
    deadline: float = 10.0


@dataclass(frozen=True)
class Permission:
    """A user's call permission as ``GET call_permissions`` reports it."""

    status: str  # no_permission | temporary | permanent
    expiration_time: int | None
    can_call: bool
    can_request: bool
    raw: dict[str, Any]


class GraphClient:
    """Typed access to ``/<PHONE_NUMBER_ID>/calls`` and the permission endpoints."""

    def __init__(
        self,
        *,
        base_url: str,
        access_token: str,
        phone_number_id: str,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.phone_number_id = phone_number_id
        self.retry = retry or RetryPolicy()
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=timeout,
            # aiohttp's client under httpx's API: a third of httpx's own CPU per request.
            transport=transport if transport is not None else AiohttpTransport(),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    # --- call actions ---------------------------------------------------------

    async def connect(
        self, to: str, sdp: str, *, biz_opaque_callback_data: str | None = None
    ) -> str:
        """Place a business-initiated call; returns the new call's ``wacid``."""
        body: dict[str, Any] = {"to": to, "session": {"sdp_type": "offer", "sdp": sdp}}
        if biz_opaque_callback_data is not None:
            _check_callback_data(biz_opaque_callback_data)
            body["biz_opaque_callback_data"] = biz_opaque_callback_data
        data = await self._call_action("connect", body, idempotent=False)
        try:
            return str(data["calls"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise GraphAPIError(
                "connect answered without a call id", status=200, body=data
            ) from None

    async def pre_accept(self, call_id: str, sdp: str) -> None:
        """Send our SDP answer early so the media path can come up."""
        await self._call_action(
            "pre_accept", {"call_id": call_id, "session": {"sdp_type": "answer", "sdp": sdp}}
        )

    async def accept(
        self, call_id: str, sdp: str, *, biz_opaque_callback_data: str | None = None
    ) -> None:
        """Accept the call; ``sdp`` must be byte-identical to the pre_accept one."""
        body: dict[str, Any] = {"call_id": call_id, "session": {"sdp_type": "answer", "sdp": sdp}}
        if biz_opaque_callback_data is not None:
            _check_callback_data(biz_opaque_callback_data)
            body["biz_opaque_callback_data"] = biz_opaque_callback_data
        await self._call_action("accept", body)

    async def reject(self, call_id: str) -> None:
        """Decline a user's call."""
        await self._call_action("reject", {"call_id": call_id})

    async def terminate(self, call_id: str) -> None:
        """Hang up (also after the media path said goodbye: billing follows the API)."""
        await self._call_action("terminate", {"call_id": call_id})

    # --- permissions ----------------------------------------------------------

    async def request_permission(self, to: str, body_text: str | None = None) -> str:
        """Send an interactive call permission request; returns the message id."""
        interactive: dict[str, Any] = {
            "type": "call_permission_request",
            "action": {"name": "call_permission_request"},
        }
        if body_text:
            interactive["body"] = {"text": body_text}
        data = await self._request(
            "POST",
            f"{self.phone_number_id}/messages",
            {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to,
                "type": "interactive",
                "interactive": interactive,
            },
            idempotent=False,
        )
        messages = data.get("messages") if isinstance(data, dict) else None
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            return str(messages[0].get("id", ""))
        return ""

    async def get_permission(self, wa_id: str) -> Permission:
        """Look up whether we may call ``wa_id`` (and may ask)."""
        data = await self._request(
            "GET", f"{self.phone_number_id}/call_permissions", params={"user_wa_id": wa_id}
        )
        perm = data.get("permission") or {}
        actions = {
            a.get("action_name"): a for a in data.get("actions") or [] if isinstance(a, dict)
        }
        return Permission(
            status=str(perm.get("status", "no_permission")),
            expiration_time=perm.get("expiration_time"),
            can_call=bool(actions.get("start_call", {}).get("can_perform_action", False)),
            can_request=bool(
                actions.get("send_call_permission_request", {}).get("can_perform_action", False)
            ),
            raw=data,
        )

    # --- plumbing -------------------------------------------------------------

    async def _call_action(
        self, action: str, fields: dict[str, Any], *, idempotent: bool = True
    ) -> Any:
        body = {"messaging_product": "whatsapp", "action": action, **fields}
        return await self._request(
            "POST", f"{self.phone_number_id}/calls", body, idempotent=idempotent
        )

    async def _request(
        self,
        method: str,
        path: str,
        json_body: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> Any:
        policy = self.retry
        deadline = time.monotonic() + policy.deadline
        label = _label(method, path, json_body)
        attempt = 0
        while True:
            attempt += 1
            delay = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
            delay *= 0.5 + random.random() / 2
            try:
                response = await self._client.request(method, path, json=json_body, params=params)
                if response.status_code < 400:
                    return _json_or_empty(response)
                error = _error_from_response(response)
                safe = error.status == 429 or (idempotent and error.status >= 500)
                # Meta's rate limits may say when to come back: not sooner.
                delay = max(delay, _retry_after(response))
            except httpx.TransportError as exc:
                error = GraphAPIError(f"request failed: {exc!r}", status=0)
                # A request that never connected was never seen by Meta.
                safe = idempotent or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            if not safe or attempt >= policy.attempts or time.monotonic() + delay > deadline:
                log.warning("%s failed after %d attempt(s): %s", label, attempt, clip(error, 300))
                raise error
            log.info("%s: %s; retrying in %.2fs", label, clip(error, 300), delay)
            await asyncio.sleep(delay)


def _label(method: str, path: str, body: dict[str, Any] | None) -> str:
    if body and "action" in body:
        return f"{body['action']} (call {clip(body.get('call_id', body.get('to', '-')), 80)})"
    return f"{method} {path}"


def _retry_after(response: httpx.Response) -> float:
    # Seconds only: the Graph API does not send HTTP dates here.
    try:
        seconds = float(response.headers.get("Retry-After", "0"))
    except ValueError:
        return 0.0
    return seconds if 0.0 <= seconds < 3600.0 else 0.0


def _json_or_empty(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


def _error_from_response(response: httpx.Response) -> GraphAPIError:
    body = _json_or_empty(response)
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return GraphAPIError(
            f"HTTP {response.status_code} without a Graph error body",
            status=response.status_code,
            body=body,
        )
    data = err.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    code = err.get("code")
    # Some real errors carry only a code and a title.
    message = next(
        (m for m in (err.get("message"), err.get("title")) if isinstance(m, str) and m),
        "unknown error",
    )
    return GraphAPIError(
        message,
        status=response.status_code,
        code=_code(code),
        details=details if isinstance(details, str) else None,
        error_type=_str_or_none(err.get("type")),
        fbtrace_id=_str_or_none(err.get("fbtrace_id")),
        body=body,
    )


def _code(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 2**63 else None
    if isinstance(value, str) and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _check_callback_data(value: str) -> None:
    if len(value) > MAX_CALLBACK_DATA:
        raise GatewayError(
            f"biz_opaque_callback_data is {len(value)} characters; "
            f"the Cloud API allows at most {MAX_CALLBACK_DATA}"
        )
