"""The browser phone: a web page, served by the sandbox, that calls the gateway like WhatsApp.

The page (``static/``) is the WhatsApp user. Its WebRTC stack makes the SDP offer
and plays and records the audio; the sandbox plays Meta in between: it rewrites
the browser's offer into the form WhatsApp sends (``a=mid:audio``, only Opus/111
and ``telephone-event/8000``/126, one sha-256 fingerprint), delivers it to the
gateway as a signed ``connect`` webhook, and hands the gateway's ``pre_accept``
answer back to the browser with the browser's own mid. Hanging up on the page
posts a ``terminate`` webhook; a ``terminate`` from the bot ends the call on the
page. Key presses travel in-band, as the browser's RFC 4733 packets.

ICE roles differ from a real call on purpose. Meta's edge is ICE-lite, so the
business is the controlling agent; a browser is a full ICE agent and, as the
offerer, controls (RFC 8445 6.1.1). Marking its offer ``a=ice-lite`` would make
both sides controlling and leave the outcome to the tie-breakers, so the sandbox
forwards the offer without it and the gateway's aiortc is the controlled agent.

Routes, beside the fake Graph API: ``GET /phone`` (the page), ``GET /phone/bots``,
``POST /phone/calls``, ``POST /phone/calls/{id}/hangup``, ``GET /phone/events``
(server-sent events: the sandbox timeline and call states, live).

The parts: :mod:`.browser_sdp` (the SDP translation), :mod:`.relay` (the media
edge), :mod:`.browser_call` (one call from the page), :mod:`.observed_bot` (the
bot, watched for the timeline); this module serves the page and its routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import httpx
from aiohttp import web

from .. import sdp
from ..app import Gateway
from ..call import Call, SessionFactory
from ..errors import SDPError
from ..pipeline.bot import Bot
from ..pipeline.plugins import available_bots, default_tts, load_bot, session_for
from ..pipeline.session import session_factory
from ..pipeline.tts import TTS
from . import payloads
from .actions import UserCallState
from .browser_call import BrowserCall, BrowserUser
from .browser_sdp import browser_candidates, browser_offer_to_whatsapp
from .cloud import CloudAPISandbox
from .observed_bot import BotActivity, ObservedBot
from .relay import MediaRelay
from .stack import start_local_stack
from .timeline import GATEWAY_LOGGERS, TimelineLogHandler

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
# Seconds the page waits for the gateway's answer; Meta gives up after 30-60 s.
ANSWER_TIMEOUT = 30.0
# Comment lines keep idle event streams open and notice closed ones.
KEEPALIVE_SECONDS = 15.0


# --- the phone ---------------------------------------------------------------------------


class BrowserPhone:
    """Serves the phone page from a sandbox and connects its calls to the gateway.

    Create it before ``sandbox.start()``: it adds its routes through
    ``sandbox.route_hooks`` and taps the sandbox timeline.
    """

    GATEWAY_LOGGERS = GATEWAY_LOGGERS

    def __init__(
        self,
        sandbox: CloudAPISandbox,
        *,
        default_bot: str = "echo",
        user: BrowserUser | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.default_bot = default_bot
        self.user = user or BrowserUser()
        self.calls: dict[str, BrowserCall] = {}
        self.activity: dict[str, BotActivity] = {}
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handler: TimelineLogHandler | None = None
        self._levels: dict[str, int] = {}
        sandbox.route_hooks.append(self.add_routes)
        self._echo = sandbox.timeline.echo
        sandbox.timeline.echo = self._on_timeline

    # --- wiring ------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Add the phone's routes to the sandbox's aiohttp app."""
        app.router.add_get("/", self._root)
        app.router.add_get("/phone", self._page)
        app.router.add_get("/phone/bots", self._bots)
        app.router.add_post("/phone/calls", self._place_call)
        app.router.add_post("/phone/calls/{call_id}/hangup", self._hang_up)
        app.router.add_get("/phone/events", self._events)
        app.router.add_static("/phone/static", STATIC)
        app.on_shutdown.append(self._on_shutdown)

    def watch_gateway_logs(self) -> None:
        """Show the gateway's call states and bot session lines on the timeline."""
        if self._handler is not None:
            return
        self._handler = TimelineLogHandler(self.sandbox.timeline, asyncio.get_running_loop())
        for name in self.GATEWAY_LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            if not logger.isEnabledFor(logging.INFO):
                logger.setLevel(logging.INFO)
            logger.addHandler(self._handler)

    def session_factory(self, tts: TTS | None = None) -> SessionFactory:
        """The gateway's session factory: runs the bot the page picked for each call.

        A real gateway cannot know what a caller picked on a web page; here the
        sandbox and the gateway share a process, so the factory looks the call up.
        Calls that did not come from the page get ``default_bot``.
        """

        async def run(call: Call) -> None:
            browser = self.calls.get(call.id)
            name = browser.bot if browser is not None else self.default_bot
            make = load_bot(name)
            activity = self.activity.setdefault(call.id, BotActivity(name))
            timeline = self.sandbox.timeline
            call.dtmf_listeners.append(lambda digit, ms: activity.dtmf.append((digit, ms)))

            def make_bot() -> Bot:
                # Hooks not spelled out in ObservedBot pass through its __getattr__.
                return cast("Bot", ObservedBot(make(), activity, timeline))

            await session_factory(make_bot, tts or default_tts())(call)

        return run

    async def aclose(self) -> None:
        """End the page's calls quietly, close event streams, stop watching logs."""
        await asyncio.gather(
            *(c.close() for c in list(self.calls.values())), return_exceptions=True
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._close_streams()
        if self._handler is not None:
            for name in self.GATEWAY_LOGGERS:
                logger = logging.getLogger(name)
                logger.removeHandler(self._handler)
                logger.setLevel(self._levels.get(name, logging.NOTSET))
            self._handler = None
        self.sandbox.timeline.echo = self._echo

    # --- events to pages ------------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        """Send an event to every open page."""
        for queue in self._subscribers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                pass  # a page that stopped reading misses events rather than growing memory

    def _on_timeline(self, line: str) -> None:
        if self._echo is not None:
            self._echo(line)
        t, text = self.sandbox.timeline.entries[-1]
        self.publish({"type": "timeline", "t": round(t * 1000), "text": text})

    def _close_streams(self) -> None:
        for queue in self._subscribers:
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                queue.get_nowait()
                queue.put_nowait(None)

    async def _on_shutdown(self, app: web.Application) -> None:
        # Event streams never finish by themselves; end them so shutdown need not wait.
        self._close_streams()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- handlers --------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/phone")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "phone.html", headers={"Cache-Control": "no-cache"})

    async def _bots(self, request: web.Request) -> web.Response:
        return web.json_response({"bots": available_bots(), "default": self.default_bot})

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        # JSON only: a cross-site form cannot post it without a CORS preflight we never grant.
        if request.content_type != "application/json":
            raise _bad_request("send application/json", status=415)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _bad_request("invalid JSON") from None
        if not isinstance(body, dict):
            raise _bad_request("expected a JSON object")
        return body

    async def _place_call(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        offer, bot = body.get("sdp"), body.get("bot") or self.default_bot
        client = str(body.get("client") or "")
        if not isinstance(offer, str) or not isinstance(bot, str):
            raise _bad_request("sdp and bot must be strings")
        if bot not in available_bots():
            raise _bad_request(f"unknown bot {bot!r}")
        try:
            sdp.validate_offer(offer)
            relay = MediaRelay(browser_candidates(offer))
            await relay.start()
        except (SDPError, OSError) as exc:
            raise _bad_request(f"cannot use the browser's offer: {exc}") from None
        try:
            whatsapp_sdp = browser_offer_to_whatsapp(offer, relay.gateway_side)
        except SDPError as exc:
            relay.close()
            raise _bad_request(f"cannot use the browser's offer: {exc.message}") from None
        call = BrowserCall(
            self.sandbox,
            self.user,
            self.sandbox.new_call_id(),
            publish=self.publish,
            bot=bot,
            browser_mid=sdp.mids(offer)[0],
            relay=relay,
            offer_sdp=whatsapp_sdp,
            client=client,
        )
        self.calls[call.call_id] = call
        self.sandbox.calls[call.call_id] = call
        self.sandbox.timeline.add(f"{self.user.name} ({self.user.wa_id}) calls bot {bot!r}")
        gw, br = relay.gateway_side, relay.browser_side
        self.sandbox.timeline.add(
            f"media edge {gw[0]}:{gw[1]} (gateway side) <-> {br[0]}:{br[1]} (browser side), "
            f"browser at {relay.browser[0]}:{relay.browser[1]}"
        )
        call.publish_state()
        try:
            response = await self.sandbox.deliver(
                payloads.connect_offer(
                    call_id=call.call_id,
                    user=self.user.wa_id,
                    user_name=self.user.name,
                    business=self.sandbox.business_number,
                    phone_number_id=self.sandbox.phone_number_id,
                    sdp=whatsapp_sdp,
                )
            )
        except httpx.HTTPError as exc:
            await call.close()
            return _error(502, f"the gateway did not take the webhook: {exc!r}")
        self.sandbox.timeline.add(f"webhook: connect delivered -> HTTP {response.status_code}")
        if response.status_code != 200:
            await call.close()
            return _error(502, f"the gateway answered the webhook with {response.status_code}")
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT):
                answer = await asyncio.shield(call.answered)
        except TimeoutError:
            await call._end("not answered", notify=True)
            return _error(504, f"the gateway sent no answer within {ANSWER_TIMEOUT:.0f} s")
        if answer is None:
            return _error(409, f"the call ended before it was answered: {call.end_reason}")
        return web.json_response({"call_id": call.call_id, "sdp": answer, "state": call.state})

    async def _hang_up(self, request: web.Request) -> web.Response:
        await self._json_body(request)
        call = self.calls.get(request.match_info["call_id"])
        if call is None:
            return _error(404, "no such call")
        await call.hang_up()
        return web.json_response({"call_id": call.call_id, "state": call.state})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        client = request.query.get("client", "")
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=2000)
        self._subscribers.add(queue)
        try:
            recent = self.sandbox.timeline.entries[-200:]
            hello = {
                "type": "hello",
                "timeline": [{"t": round(t * 1000), "text": text} for t, text in recent],
            }
            await response.write(_sse(hello))
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        event = await queue.get()
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if event is None:
                    break
                await response.write(_sse(event))
        except ConnectionError:
            pass  # the page went away
        finally:
            self._subscribers.discard(queue)
            # A page that is gone cannot hang up; do it for the person.
            for call in list(self.calls.values()):
                if client and call.client == client and call.state is not UserCallState.ENDED:
                    self._spawn(call._end("the page went away", notify=True), "phone:gone")
        return response


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _bad_request(message: str, *, status: int = 400) -> web.HTTPException:
    cls = web.HTTPUnsupportedMediaType if status == 415 else web.HTTPBadRequest
    return cls(text=json.dumps({"error": message}), content_type="application/json")


# --- the whole thing, served ---------------------------------------------------------------


class PhoneSandbox:
    """The fake Cloud API with the phone page, and a gateway pointed at it, on loopback."""

    def __init__(self, sandbox: CloudAPISandbox, phone: BrowserPhone, gateway: Gateway) -> None:
        self.sandbox = sandbox
        self.phone = phone
        self.gateway = gateway

    @property
    def url(self) -> str:
        """Where the phone page is."""
        return f"http://{self.sandbox.host}:{self.sandbox.port}/phone"

    @classmethod
    async def start(
        cls,
        *,
        bot: str = "echo",
        port: int = 0,
        echo: Callable[[str], None] | None = None,
        tts: TTS | None = None,
    ) -> PhoneSandbox:
        """Start the sandbox (and page) on 127.0.0.1:``port``, then the gateway."""
        load_bot(bot)  # an unknown default bot fails now, with the list of choices
        sandbox = CloudAPISandbox(
            webhook_url="",
            app_secret=secrets.token_hex(16),
            access_token=secrets.token_hex(16),
            host="127.0.0.1",
            port=port,
        )
        sandbox.timeline.echo = echo
        phone = BrowserPhone(sandbox, default_bot=bot)
        try:
            stack = await start_local_stack(
                sandbox, bot=bot, session=phone.session_factory(tts), sessions=session_for
            )
        except BaseException:
            await phone.aclose()
            raise
        gateway = stack.gateway
        phone.watch_gateway_logs()
        return cls(sandbox, phone, gateway)

    async def aclose(self) -> None:
        """Stop the gateway (its calls end through the sandbox), then the page and sandbox."""
        try:
            await self.gateway.aclose()
        finally:
            await self.phone.aclose()
            await self.sandbox.aclose()
