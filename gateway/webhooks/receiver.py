"""The aiohttp side of the webhook: ``GET``/``POST /webhook``, answered at once.

Meta retries a delivery for days unless it gets a 200 within about 20 s, may send
it twice, and may batch many changes into one body. So the receiver checks the
signature, parses everything into :mod:`gateway.events` objects, hands them to a
non-blocking sink and answers at once; the call logic runs elsewhere.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import UnavailableError, WebhookError
from ..events import Event
from ..logsafe import clip
from .decode import decode_json
from .parse import parse_payload
from .signature import SIGNATURE_HEADER, verify_signature

__all__ = ["DEFAULT_MAX_BODY_BYTES", "EventSink", "WebhookReceiver"]

# The webhook's logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.webhooks")

# A real delivery is a few kB (one call event with its SDP). The body must be read
# before its signature can be checked, so this cap is what an unauthenticated
# sender can make the gateway hold per request (GATEWAY_WEBHOOK_MAX_BYTES).
DEFAULT_MAX_BODY_BYTES = 64 * 1024

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
