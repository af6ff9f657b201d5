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
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
from aiohttp import web

from .. import rtc, sdp
from ..app import Gateway
from ..calls import Call, SessionFactory
from ..errors import SDPError
from ..media.audio import SAMPLE_RATE
from ..pipeline.bot import Bot, CallControl, CallInfo, Interruption, PlaybackResult, Utterance
from ..pipeline.plugins import available_bots, default_tts, load_bot, session_for
from ..pipeline.session import session_factory
from ..pipeline.tts import TTS
from . import payloads
from .cloud import GATEWAY_LOGGERS, CloudAPISandbox, Timeline, TimelineLogHandler
from .stack import start_local_stack
from .user import WHATSAPP_OPUS_FMTP, UserCallState, check_action

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
# Seconds the page waits for the gateway's answer; Meta gives up after 30-60 s.
ANSWER_TIMEOUT = 30.0
# Comment lines keep idle event streams open and notice closed ones.
KEEPALIVE_SECONDS = 15.0
# Header extensions WhatsApp's offers carry (shared/whatsapp-calling.md, section 4).
# Chrome's sdes:mid must go: the gateway would tag its RTP with mid "audio",
# which the browser, whose mid is "0", would not route.
WHATSAPP_EXTENSIONS = frozenset(
    {
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    }
)
# Browser offer lines WhatsApp's offers never carry.
_DROPPED_PREFIXES = ("a=extmap-allow-mixed", "a=ice-options:", "a=rtcp-rsize", "a=rtcp-xr:")
_CANDIDATE = re.compile(
    r"a=candidate:\S+ (?P<component>\d+) (?P<transport>\S+) \d+ "
    r"(?P<address>\S+) (?P<port>\d+) typ (?P<type>\S+)"
)


# --- SDP, browser <-> WhatsApp --------------------------------------------------------


Address = tuple[str, int]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def browser_candidates(offer: str) -> list[Address]:
    """The browser's candidates the media edge will talk to.

    UDP host candidates with literal addresses (aioice would resolve mDNS names
    with multicast queries), and only the loopback ones when there are any
    (Chromium with --allow-loopback-in-peer-connection): then nothing but
    loopback is ever answered.
    """
    found: list[Address] = []
    for line in sdp.lines(offer):
        m = _CANDIDATE.match(line)
        if not m or m["component"] != "1" or m["transport"].lower() != "udp":
            continue
        if m["type"] != "host":
            continue
        try:
            ipaddress.ip_address(m["address"])
        except ValueError:
            continue
        found.append((m["address"], int(m["port"])))
    loopback = [c for c in found if _is_loopback(c[0])]
    return loopback or found


def _rtpmap_pt(lines: list[str], encoding: str) -> int | None:
    # The payload type of an exact encoding such as telephone-event/8000.
    for line in lines:
        m = re.match(r"a=rtpmap:(\d+) (\S+)", line)
        if m and m.group(2).lower().startswith(encoding.lower()):
            return int(m.group(1))
    return None


def _with_candidate(lines: list[str], edge: Address) -> list[str]:
    # Every candidate replaced by the media edge's one address, as Meta's SDP
    # names its own servers and never the other party.
    host, port = edge
    family = "IP6" if ":" in host else "IP4"
    candidate = f"a=candidate:1 1 udp 2113937151 {host} {port} typ host generation 0"
    out: list[str] = []
    for line in lines:
        if line.startswith(("a=candidate:", "a=end-of-candidates")):
            continue
        if line.startswith("m=audio "):
            parts = line.split(" ")
            line = " ".join([parts[0], str(port), *parts[2:]])
        elif line.startswith("c="):
            line = f"c=IN {family} {host}"
        out.append(line)
        if line.startswith("a=ice-pwd:"):
            out.append(candidate)
    if candidate not in out:
        raise SDPError("the SDP has no a=ice-pwd line in its media section")
    return out


def browser_offer_to_whatsapp(offer: str, edge: Address) -> str:
    """Rewrite a browser's SDP offer into the form the Cloud API delivers.

    ``edge`` is the media edge's address toward the gateway. Raises SDPError when
    the browser's offer cannot become a WhatsApp offer.
    """
    sdp.validate_offer(offer)
    mids = sdp.mids(offer)
    if len(mids) != 1:
        raise SDPError(f"expected one media section, found {len(mids)}")
    lines = sdp.lines(offer)
    if _rtpmap_pt(lines, "opus/48000/2") != rtc.OPUS_PT:
        raise SDPError(f"the browser must offer opus/48000/2 on payload type {rtc.OPUS_PT}")
    if _rtpmap_pt(lines, "telephone-event/8000") != rtc.DTMF_PT:
        raise SDPError(f"the browser must offer telephone-event/8000 on payload type {rtc.DTMF_PT}")
    kept_pts = {str(rtc.OPUS_PT), str(rtc.DTMF_PT)}
    out: list[str] = []
    for line in lines:
        if line.startswith(_DROPPED_PREFIXES):
            continue
        if line.startswith("m=audio "):
            parts = line.split(" ")
            out.append(" ".join([*parts[:3], str(rtc.OPUS_PT), str(rtc.DTMF_PT)]))
            continue
        m = re.match(r"a=(rtpmap|fmtp|rtcp-fb):(\d+) ", line)
        if m and m.group(2) not in kept_pts:
            continue
        if m and m.group(1) == "fmtp" and m.group(2) == str(rtc.OPUS_PT):
            continue  # replaced by WhatsApp's Opus parameters after the rtpmap
        ext = re.match(r"a=extmap:\d+(?:/\S+)? (\S+)", line)
        if ext and ext.group(1) not in WHATSAPP_EXTENSIONS:
            continue
        out.append(line)
        if line.startswith(f"a=rtpmap:{rtc.OPUS_PT} "):
            out.append(f"a=fmtp:{rtc.OPUS_PT} {WHATSAPP_OPUS_FMTP}")
    text = sdp.join(_with_candidate(out, edge))
    return sdp.keep_fingerprint(sdp.rename_mid(text, mids[0], "audio"))


def whatsapp_answer_to_browser(answer: str, browser_mid: str, edge: Address) -> str:
    """The business's answer as the browser needs it: its own mid, the edge's address."""
    text = sdp.join(_with_candidate(sdp.lines(answer), edge))
    return sdp.rename_mid(text, "audio", browser_mid)


def answer_address(answer: str) -> Address | None:
    """The first UDP host candidate of an SDP answer (where the gateway listens)."""
    for line in sdp.lines(answer):
        m = _CANDIDATE.match(line)
        if m and m["component"] == "1" and m["transport"].lower() == "udp":
            return (m["address"], int(m["port"]))
    return None


# --- the media edge ---------------------------------------------------------------------


class _Side(asyncio.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes, Address], None]) -> None:
        self.receive = receive

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.receive(data, (addr[0], addr[1]))


@dataclass
class RelayStats:
    """What the media edge forwarded, and what it refused."""

    to_gateway: int = 0
    to_browser: int = 0
    dropped: int = 0
    dropped_from: set[str] = field(default_factory=set)


class MediaRelay:
    """Meta's media edge, reduced to forwarding datagrams between browser and gateway.

    The gateway talks to one address (``gateway_side``) and the browser to another
    (``browser_side``), both on 127.0.0.1, as a business talks only to Meta's
    servers. ICE, DTLS and SRTP pass through untouched, end to end. Datagrams from
    addresses the browser did not offer are dropped, so ICE can only succeed on
    the browser's offered (loopback) candidate: Chromium otherwise prefers to
    send from its Ethernet address, whose network cost it ranks lower.
    """

    def __init__(self, browser: list[Address]) -> None:
        # The edge listens on 127.0.0.1, so it talks to the browser over IPv4.
        browser = [c for c in browser if ":" not in c[0]]
        if not browser:
            raise SDPError("the offer has no IPv4 UDP host candidate")
        self.browser = browser[0]
        self.allowed = frozenset(host for host, _ in browser)
        self.gateway: Address | None = None
        self.stats = RelayStats()
        self._to_gateway: asyncio.DatagramTransport | None = None
        self._to_browser: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        """Open both sockets on 127.0.0.1."""
        loop = asyncio.get_running_loop()
        try:
            self._to_gateway, _ = await loop.create_datagram_endpoint(
                lambda: _Side(self._from_gateway), local_addr=("127.0.0.1", 0)
            )
            self._to_browser, _ = await loop.create_datagram_endpoint(
                lambda: _Side(self._from_browser), local_addr=("127.0.0.1", 0)
            )
        except OSError:
            self.close()
            raise

    @property
    def gateway_side(self) -> Address:
        """The address the gateway sends to (the offer's candidate)."""
        assert self._to_gateway is not None, "relay not started"
        host, port = self._to_gateway.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    @property
    def browser_side(self) -> Address:
        """The address the browser sends to (the answer's candidate)."""
        assert self._to_browser is not None, "relay not started"
        host, port = self._to_browser.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def _from_gateway(self, data: bytes, addr: Address) -> None:
        # The gateway has one candidate (GATEWAY_MEDIA_ADDRESSES=127.0.0.1): one sender.
        known = self.gateway is None or addr == self.gateway
        if not known or not _is_loopback(addr[0]) or self._to_browser is None:
            self._drop(addr)
            return
        self.gateway = addr
        self.stats.to_browser += 1
        self._to_browser.sendto(data, self.browser)

    def _from_browser(self, data: bytes, addr: Address) -> None:
        if addr[0] not in self.allowed or self.gateway is None or self._to_gateway is None:
            self._drop(addr)
            return
        self.browser = addr  # follow the candidate the browser's ICE agent settles on
        self.stats.to_gateway += 1
        self._to_gateway.sendto(data, self.gateway)

    def _drop(self, addr: Address) -> None:
        self.stats.dropped += 1
        self.stats.dropped_from.add(addr[0])

    def close(self) -> None:
        """Close both sockets."""
        for transport in (self._to_gateway, self._to_browser):
            if transport is not None:
                transport.close()


# --- the browser's end of a call, as the fake Graph API sees it -------------------------


@dataclass(frozen=True)
class BrowserUser:
    """The WhatsApp user the page stands for."""

    wa_id: str = "15550100100"
    name: str = "Browser caller"


@dataclass
class BotActivity:
    """What the bot on one browser call heard and did, as the phone observed it."""

    bot: str
    # Keys the gateway decoded from RTP (RFC 4733), with their durations in ms.
    dtmf: list[tuple[str, int]] = field(default_factory=list)
    utterances_ms: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    # What the bot did: "says '...'", "plays ...", "hangs up (...)".
    actions: list[str] = field(default_factory=list)
    # All of it in order: "hears an utterance (1.20 s)", "gets key 1", "says '...'".
    log: list[str] = field(default_factory=list)


class BrowserCall:
    """One call from the page: an entry in ``sandbox.calls`` like a simulated user's."""

    def __init__(
        self,
        phone: BrowserPhone,
        call_id: str,
        *,
        bot: str,
        browser_mid: str,
        relay: MediaRelay,
        offer_sdp: str,
        client: str,
    ) -> None:
        self.phone = phone
        self.sandbox = phone.sandbox
        self.call_id = call_id
        self.user = phone.user
        self.direction = "USER_INITIATED"
        self.bot = bot
        self.client = client
        self.browser_mid = browser_mid
        self.relay = relay
        # The offer the gateway got, in WhatsApp's form.
        self.offer_sdp = offer_sdp
        self.answer_sdp: str | None = None
        self.state = UserCallState.OFFERED
        self.accepted_at: float | None = None
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        # The browser's answer (None: the call ended first); the POST waits on it.
        self.answered: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- what the fake Graph API asks -----------------------------------------------------

    def check_action(self, action: str, body: dict[str, Any]) -> str | None:
        """Meta's checks on a business action for this call; a reason when refused."""
        return check_action(self.call_id, self.state, self.answer_sdp, action, body)

    def on_action(self, action: str, body: dict[str, Any]) -> None:
        """Apply an accepted business action: answer the page, or end the call."""
        if action in ("pre_accept", "accept") and self.answer_sdp is None:
            self.answer_sdp = str(body["session"]["sdp"])
            self.relay.gateway = self.relay.gateway or answer_address(self.answer_sdp)
            if not self.answered.done():
                self.answered.set_result(
                    whatsapp_answer_to_browser(
                        self.answer_sdp, self.browser_mid, self.relay.browser_side
                    )
                )
        if action == "pre_accept":
            self.publish_state(UserCallState.PRE_ACCEPTED)
        elif action == "accept":
            self.accepted_at = time.monotonic()
            self.publish_state(UserCallState.ACCEPTED)
        elif action in ("reject", "terminate"):
            # Meta confirms the end of the call with a terminate webhook.
            done = "rejected" if action == "reject" else "terminated"
            self._spawn(self._end(f"{done} by the business", notify=True))

    def publish_state(self, state: UserCallState | None = None, reason: str | None = None) -> None:
        """Move to ``state`` (default: stay) and tell the open pages."""
        self.state = state or self.state
        event: dict[str, Any] = {"type": "call", "call_id": self.call_id, "state": str(state)}
        if reason is not None:
            event["reason"] = reason
        self.phone.publish(event)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=f"phone:{self.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- what the person on the page does ---------------------------------------------------

    async def hang_up(self) -> None:
        """Hang up from the page: Meta posts a terminate webhook."""
        await self._end("user hung up", notify=True)

    async def close(self) -> None:
        """Tear down without telling anyone (sandbox shutdown), and stop our tasks."""
        await self._end("sandbox closed", notify=False)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _end(self, reason: str, *, notify: bool) -> None:
        if self.state is UserCallState.ENDED:
            return
        was_accepted = self.accepted_at is not None
        self.end_reason = reason
        self.publish_state(UserCallState.ENDED, reason)
        self.sandbox.timeline.add(f"{self.user.name}'s call ends: {reason}")
        if not self.answered.done():
            self.answered.set_result(None)
        self.sandbox.calls.pop(self.call_id, None)
        self.relay.close()
        st = self.relay.stats
        dropped = f"; dropped {st.dropped} from {', '.join(sorted(st.dropped_from))}"
        self.sandbox.timeline.add(
            f"media edge forwarded {st.to_gateway} datagrams to the gateway and "
            f"{st.to_browser} to the browser{dropped if st.dropped else ''}"
        )
        if notify:
            business = self.sandbox.business_number
            now = int(time.time())
            start = now - int(time.monotonic() - self.accepted_at) if self.accepted_at else None
            try:
                await self.sandbox.deliver(
                    payloads.terminate(
                        call_id=self.call_id,
                        from_=self.user.wa_id,
                        to=business,
                        business=business,
                        phone_number_id=self.sandbox.phone_number_id,
                        direction=self.direction,
                        status="COMPLETED" if was_accepted else "FAILED",
                        start_time=start,
                        end_time=now if start is not None else None,
                    )
                )
            except httpx.HTTPError as exc:  # the gateway may be gone already
                log.info("call %s: terminate webhook not delivered: %r", self.call_id, exc)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self.ended.set()


# --- the bot, observed --------------------------------------------------------------------


class _ObservedControl:
    """The bot's CallControl, reporting what the bot does to the phone's timeline."""

    def __init__(self, inner: CallControl, note: Callable[[str], None]) -> None:
        self._inner = inner
        self._note = note

    @property
    def info(self) -> CallInfo:
        return self._inner.info

    async def say(self, text: str, *, interruptible: bool = True) -> PlaybackResult:
        self._note(f"says {text!r}")
        return await self._inner.say(text, interruptible=interruptible)

    async def play(
        self, audio: np.ndarray | str | Path, *, interruptible: bool = True, label: str = ""
    ) -> PlaybackResult:
        seconds = f" ({len(audio) / SAMPLE_RATE:.1f} s)" if isinstance(audio, np.ndarray) else ""
        self._note(f"plays {label or str(audio)}{seconds}")
        return await self._inner.play(audio, interruptible=interruptible, label=label)

    async def hangup(self, reason: str = "bot hung up") -> None:
        self._note(f"hangs up ({reason})")
        await self._inner.hangup(reason)

    def __getattr__(self, name: str) -> Any:
        # Everything else (listen, expect_input, what comes later) is the session's own.
        return getattr(self._inner, name)


class _ObservedBot:
    """A bot wrapped so the page's timeline shows what it hears and says.

    Hooks it does not name pass through ``__getattr__`` with the wrapped control,
    so hooks added to the Bot protocol later still reach the bot.
    """

    def __init__(self, bot: Bot, activity: BotActivity, timeline: Timeline) -> None:
        self._bot = bot
        self._activity = activity
        self._timeline = timeline
        self._control: tuple[CallControl, CallControl] | None = None

    def _note(self, text: str, *, action: bool = True) -> None:
        if action:
            self._activity.actions.append(text)
        self._activity.log.append(text)
        self._timeline.add(f"bot {self._activity.bot} {text}")

    def _wrap(self, call: CallControl) -> CallControl:
        if self._control is None or self._control[0] is not call:
            # The wrapper forwards what it does not define (see __getattr__).
            self._control = (call, cast("CallControl", _ObservedControl(call, self._note)))
        return self._control[1]

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        self._activity.utterances_ms.append(utterance.duration_ms)
        self._note(f"hears an utterance ({utterance.duration_ms / 1000:.2f} s)", action=False)
        await self._bot.on_utterance(self._wrap(call), utterance)

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        self._activity.keys.append(digit)
        self._note(f"gets key {digit}", action=False)
        await self._bot.on_dtmf(self._wrap(call), digit)

    async def on_barge_in(self, call: CallControl, interruption: Interruption) -> None:
        self._note(f"is interrupted ({interruption.label})", action=False)
        await self._bot.on_barge_in(self._wrap(call), interruption)

    def __getattr__(self, name: str) -> Any:
        hook = getattr(self._bot, name)
        if not name.startswith("on_") or not callable(hook):
            return hook

        async def forward(call: CallControl, *args: Any, **kwargs: Any) -> Any:
            return await hook(self._wrap(call), *args, **kwargs)

        return forward


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
                # Hooks not spelled out in _ObservedBot pass through its __getattr__.
                return cast("Bot", _ObservedBot(make(), activity, timeline))

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
            self,
            self.sandbox.new_call_id(),
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
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
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
