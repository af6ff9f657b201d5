"""The webhook receiver: verify, parse and hand off Cloud API deliveries.

Meta retries a delivery for days unless it gets a 200 within about 20 s, may send
it twice, and may batch many changes into one body. So the receiver checks the
signature, parses everything into :mod:`gateway.events` objects, hands them to a
non-blocking sink and answers at once; the call logic runs elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from .errors import UnavailableError, WebhookError
from .events import (
    CallConnect,
    CallErrorInfo,
    CallStatus,
    CallTerminate,
    Contact,
    Direction,
    Event,
    PermissionReply,
)
from .logsafe import clip

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
# A real delivery is a few kB (one call event with its SDP). The body must be read
# before its signature can be checked, so this cap is what an unauthenticated
# sender can make the gateway hold per request (GATEWAY_WEBHOOK_MAX_BYTES).
DEFAULT_MAX_BODY_BYTES = 64 * 1024
# Call ids are ASCII tokens ("wacid." and base64); anything else is not from Meta.
MAX_CALL_ID_CHARS = 256
# Numbers outside this range are junk (and would not fit a database column).
_INT64_MAX = 2**63 - 1
# Only a \uD800-\uDFFF escape can put a surrogate into a string json.loads returns.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` header value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, app_secret: str) -> None:
    """Raise WebhookError(401) unless ``header`` signs ``body`` (constant-time compare)."""
    if not header:
        raise WebhookError(f"missing {SIGNATURE_HEADER} header", status=401)
    if not header.startswith("sha256="):
        raise WebhookError(f"{SIGNATURE_HEADER} must start with 'sha256='", status=401)
    if not hmac.compare_digest(sign(body, app_secret).encode(), header.strip().encode()):
        raise WebhookError("signature does not match the body", status=401)


# --- parsing ---------------------------------------------------------------


class _Shape(Exception):
    """A part of the payload has the wrong shape; the message says where."""


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _Shape(f"{where}.{key} must be a non-empty string")
    return value


def _call_id(obj: dict[str, Any], where: str) -> str:
    value = _str(obj, "id", where)
    if (
        len(value) > MAX_CALL_ID_CHARS
        or not value.isascii()
        or not value.isprintable()
        or " " in value
    ):
        raise _Shape(f"{where}.id is not a call id: {clip(value, 40)}")
    return value


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _text(obj: dict[str, Any], key: str) -> str:
    # Lenient: a field that is not a string is treated as absent (never str() a
    # structure from outside: it may be huge or nested a thousand deep).
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _opt_int(value: Any) -> int | None:
    # Unix seconds and durations come as strings or numbers; junk, Infinity, NaN
    # and numbers too big for 64 bits count as absent.
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if -_INT64_MAX <= number <= _INT64_MAX else None


def _ts(value: Any) -> int:
    return _opt_int(value) or 0


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Shape(f"{where} must be an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Shape(f"{where} must be a list")
    return value


def _direction(value: Any) -> Direction | None:
    if not isinstance(value, str):
        return None
    try:
        return Direction(value)
    except ValueError:
        return None


def _items(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    return _list(value, f"{where}.{key}")


def _call_errors(value: Any) -> tuple[CallErrorInfo, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for err in value:
        if not isinstance(err, dict):
            continue
        data = err.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        out.append(
            CallErrorInfo(
                code=_opt_int(err.get("code")),
                message=_opt_str(err, "message") or _opt_str(err, "title"),
                details=details if isinstance(details, str) else None,
            )
        )
    return tuple(out)


def _parse_call(call: dict[str, Any], value: dict[str, Any], pnid: str, where: str) -> Event | None:
    call_id = _call_id(call, where)
    kind = call.get("event")
    if kind == "connect":
        session = call.get("session")
        if not isinstance(session, dict):
            # Legacy payloads carried the SDP here only.
            connection = call.get("connection")
            webrtc = connection.get("webrtc") if isinstance(connection, dict) else None
            session = {"sdp": webrtc.get("sdp") if isinstance(webrtc, dict) else None}
        sdp = session.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise _Shape(f"{where}.session.sdp must be a non-empty string (call {call_id})")
        direction = _direction(call.get("direction")) or Direction.USER_INITIATED
        sdp_type = session.get("sdp_type") or (
            "answer" if direction is Direction.BUSINESS_INITIATED else "offer"
        )
        if not isinstance(sdp_type, str) or sdp_type not in ("offer", "answer"):
            raise _Shape(f"{where}.session.sdp_type must be offer or answer (call {call_id})")
        contact = None
        contacts = value.get("contacts")
        if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict):
            profile = contacts[0].get("profile")
            name = profile.get("name") if isinstance(profile, dict) else None
            wa_id = contacts[0].get("wa_id")
            if isinstance(wa_id, str):
                contact = Contact(wa_id=wa_id, name=name if isinstance(name, str) else None)
        return CallConnect(
            call_id=call_id,
            phone_number_id=pnid,
            from_=_text(call, "from"),
            to=_text(call, "to"),
            direction=direction,
            sdp_type=sdp_type,
            sdp=sdp,
            timestamp=_ts(call.get("timestamp")),
            contact=contact,
            biz_opaque_callback_data=_opt_str(call, "biz_opaque_callback_data"),
            deeplink_payload=_opt_str(value, "deeplink_payload"),
            cta_payload=_opt_str(value, "cta_payload"),
        )
    if kind == "terminate":
        return CallTerminate(
            call_id=call_id,
            phone_number_id=pnid,
            from_=_text(call, "from"),
            to=_text(call, "to"),
            direction=_direction(call.get("direction")),
            status=_text(call, "status").upper(),
            timestamp=_ts(call.get("timestamp")),
            start_time=_opt_int(call.get("start_time")),
            end_time=_opt_int(call.get("end_time")),
            duration=_opt_int(call.get("duration")),
            biz_opaque_callback_data=_opt_str(call, "biz_opaque_callback_data"),
            errors=_call_errors(call.get("errors") or value.get("errors")),
        )
    log.info("ignoring call event %s for call %s", clip(kind, 40), call_id)
    return None


def _parse_calls_value(value: dict[str, Any], pnid: str, where: str) -> Iterable[Event | _Shape]:
    try:
        calls = _items(value, "calls", where)
        statuses = _items(value, "statuses", where)
    except _Shape as exc:
        yield exc
        return
    for i, call in enumerate(calls):
        try:
            event = _parse_call(
                _dict(call, f"{where}.calls[{i}]"), value, pnid, f"{where}.calls[{i}]"
            )
        except _Shape as exc:
            yield exc
            continue
        if event is not None:
            yield event
    for i, status in enumerate(statuses):
        w = f"{where}.statuses[{i}]"
        try:
            status = _dict(status, w)
            if status.get("type", "call") != "call":
                continue
            yield CallStatus(
                call_id=_call_id(status, w),
                phone_number_id=pnid,
                status=_str(status, "status", w).upper(),
                timestamp=_ts(status.get("timestamp")),
                recipient_id=_opt_str(status, "recipient_id"),
                biz_opaque_callback_data=_opt_str(status, "biz_opaque_callback_data"),
            )
        except _Shape as exc:
            yield exc


def _parse_messages_value(value: dict[str, Any], pnid: str) -> Iterable[Event]:
    # Only permission replies matter here; every other message is someone else's business.
    messages = value.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        interactive = message.get("interactive")
        if not isinstance(interactive, dict) or interactive.get("type") != "call_permission_reply":
            continue
        reply = interactive.get("call_permission_reply")
        if not isinstance(reply, dict):
            continue
        context = message.get("context")
        yield PermissionReply(
            phone_number_id=pnid,
            from_=_text(message, "from"),
            accepted=reply.get("response") == "accept",
            permanent=bool(reply.get("is_permanent", False)),
            timestamp=_ts(message.get("timestamp")),
            context_id=_opt_str(context, "id") if isinstance(context, dict) else None,
            expiration_timestamp=_opt_int(reply.get("expiration_timestamp")),
            response_source=_opt_str(reply, "response_source"),
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _has_lone_surrogate(payload: Any) -> bool:
    # Iterative: the payload may be nested as deep as json.loads allows.
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def decode_json(body: bytes) -> Any:
    """Decode a delivery body as strict JSON; WebhookError(400) says why it is not.

    Stricter than ``json.loads``: no ``NaN``/``Infinity``, and no lone UTF-16
    surrogates (``"\\ud800"``), which are valid JSON escapes but not text: such a
    call id could never be sent back to the Graph API.
    """
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise WebhookError("body is nested too deeply") from None
    except ValueError as exc:  # also bad UTF-8 and numbers too long to convert
        raise WebhookError(f"body is not valid JSON: {clip(exc)}") from None
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(payload):
        raise WebhookError("body contains a lone UTF-16 surrogate (not valid Unicode)")
    return payload


def parse_payload(payload: Any) -> tuple[list[Event], list[str]]:
    """Parse a decoded delivery into events, plus a list of what was malformed.

    Unknown fields and other ``field`` values are ignored. Envelope-level damage
    raises WebhookError(400); a bad entry inside a good envelope is reported in the
    second list while the good ones are still returned.
    """
    try:
        root = _dict(payload, "body")
        entries = _list(root.get("entry"), "entry")
    except _Shape as exc:
        raise WebhookError(str(exc)) from None
    events: list[Event] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        try:
            changes = _list(_dict(entry, f"entry[{i}]").get("changes"), f"entry[{i}].changes")
        except _Shape as exc:
            problems.append(str(exc))
            continue
        for j, change in enumerate(changes):
            where = f"entry[{i}].changes[{j}]"
            try:
                change = _dict(change, where)
                field = change.get("field")
                if field not in ("calls", "messages"):
                    continue
                value = _dict(change.get("value"), f"{where}.value")
                metadata = value.get("metadata")
                pnid = _text(metadata, "phone_number_id") if isinstance(metadata, dict) else ""
            except _Shape as exc:
                problems.append(str(exc))
                continue
            if field == "messages":
                events.extend(_parse_messages_value(value, pnid))
                continue
            for item in _parse_calls_value(value, pnid, f"{where}.value"):
                if isinstance(item, _Shape):
                    problems.append(str(item))
                else:
                    events.append(item)
    return events, problems


# --- the aiohttp side --------------------------------------------------------

# Takes one event; False when it was a duplicate; UnavailableError when it cannot be
# taken now. It must answer quickly: the call work runs elsewhere.
EventSink = Callable[[Event], Awaitable[bool]]


class WebhookReceiver:
    """aiohttp handlers for ``GET``/``POST /webhook``.

    ``sink`` (a :class:`gateway.routing.Router`'s ``deliver``) drops duplicates
    and hands each new event on without waiting for the call work. When it
    cannot take an event (the cluster's Redis is unreachable) the delivery gets a
    503 and WhatsApp sends it again; events taken before that are deduplicated then.
    A body over ``max_body_bytes`` is refused with 413 before more than that is
    read, and its connection closed.
    """

    def __init__(
        self,
        *,
        app_secret: str,
        verify_token: str,
        sink: EventSink,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._app_secret = app_secret
        self._verify_token = verify_token
        self._sink = sink
        self.max_body_bytes = max_body_bytes
        self.duplicates = 0
        self.unavailable = 0
        """Deliveries answered 503 because the cluster's Redis was unreachable."""
        self.too_large = 0
        """Deliveries refused for their size."""
        self.internal_errors = 0
        """Signed deliveries the parser failed on unexpectedly (a bug: should stay 0)."""

    def add_routes(self, app: web.Application, path: str = "/webhook") -> None:
        """Register the verification and delivery handlers on ``app``."""
        app.router.add_get(path, self.handle_verify)
        app.router.add_post(path, self.handle_delivery)

    async def handle_verify(self, request: web.Request) -> web.Response:
        """The subscription handshake: echo ``hub.challenge`` when the token matches."""
        q = request.query
        token = q.get("hub.verify_token", "")
        if q.get("hub.mode") == "subscribe" and hmac.compare_digest(
            token.encode(), self._verify_token.encode()
        ):
            return web.Response(text=q.get("hub.challenge", ""))
        log.warning("webhook verification refused (mode=%s)", clip(q.get("hub.mode"), 40))
        return web.Response(status=403, text="verification failed")

    async def handle_delivery(self, request: web.Request) -> web.Response:
        """Verify, parse, hand off, and answer; never raises to aiohttp."""
        try:
            body = await self._read_body(request)
            verify_signature(body, request.headers.get(SIGNATURE_HEADER), self._app_secret)
            events, problems = self._parse(body)
        except WebhookError as exc:
            log.warning("webhook refused (%d): %s", exc.status, clip(exc.message))
            response = web.json_response({"error": exc.message}, status=exc.status)
            if exc.status == 413:
                # Answer, then close: aiohttp would otherwise read (and discard) the
                # rest of the body for up to 10 s before reusing the connection.
                response.force_close()
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()
            return response
        accepted = 0
        for event in events:
            try:
                taken = await self._sink(event)
            except UnavailableError as exc:
                self.unavailable += 1
                log.warning(
                    "webhook for call %s answered 503 (WhatsApp retries it): %s",
                    _event_id(event),
                    exc.message,
                )
                return web.json_response({"error": exc.message}, status=503)
            if not taken:
                self.duplicates += 1
                log.info("duplicate %s for call %s dropped", type(event).__name__, _event_id(event))
                continue
            accepted += 1
        if problems:
            # Good events were taken (a retry is deduplicated); say what was wrong.
            log.warning(
                "malformed webhook: %d part(s) refused, first: %s", len(problems), problems[0]
            )
            return web.json_response(
                {"error": "malformed entries", "problems": problems[:20]}, status=400
            )
        return web.json_response({"received": accepted})

    async def _read_body(self, request: web.Request) -> bytes:
        # Refuse by the declared length first, then count what really arrives
        # (chunked bodies declare none): never hold more than the cap.
        limit = self.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            self.too_large += 1
            raise WebhookError(f"body of {declared} bytes is over {limit}", status=413)
        body = bytearray()
        while chunk := await request.content.readany():
            if len(body) + len(chunk) > limit:
                self.too_large += 1
                raise WebhookError(f"body is over {limit} bytes", status=413)
            body += chunk
        return bytes(body)

    def _parse(self, body: bytes) -> tuple[list[Event], list[str]]:
        try:
            payload = decode_json(body)
            return parse_payload(payload)
        except WebhookError:
            raise
        except Exception:
            # A parser bug must not become a 500 (Meta would retry it for days).
            self.internal_errors += 1
            log.exception("webhook parser failed on a signed delivery")
            raise WebhookError("delivery could not be processed") from None


def _event_id(event: Event) -> str:
    return getattr(event, "call_id", "-")
