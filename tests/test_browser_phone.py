"""The browser phone in a real browser: headless Chromium calls bots through the sandbox.

Chromium's own WebRTC stack is the WhatsApp user here. The page's offer reaches
the gateway as a signed connect webhook; the tests check from both ends that
audio flowed, that keypad presses arrive as RFC 4733 events, and that hang-up
works from either side. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.async_api import Page, async_playwright

from gateway import sdp
from gateway.calls import CallState
from gateway.pipeline.plugins import available_bots
from gateway.sandbox.phone import PhoneSandbox

from .conftest import AUDIO

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
# Debian's /usr/bin/chromium is a wrapper script that exports Google API keys and
# turns remote extensions on; the binary itself runs with only our flags.
CHROMIUM = next(
    (
        p
        for p in ("/usr/lib/chromium/chromium", shutil.which("chromium"))
        if p and os.access(p, os.X_OK)
    ),
    None,
)
if CHROMIUM is None:
    if os.environ.get("REQUIRE_CHROMIUM"):
        raise RuntimeError("REQUIRE_CHROMIUM is set but chromium is not installed")
    pytest.skip("chromium is not installed (`make test` installs it)", allow_module_level=True)

# Deadlines for things that take a few seconds; generous so a slow machine passes.
DEADLINE = 20.0


def chromium_args(wav: Path) -> list[str]:
    """Flags for a headless Chromium that stays off the network and speaks ``wav``."""
    return [
        "--no-sandbox",  # tests run as root in CI
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        # The caller says the recording once, then silence (not a loop).
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        # No DNS queries (Chromium still looks up Google hosts at start) and no proxy probing.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--no-proxy-server",
        # Chromium skips loopback interfaces for WebRTC unless told; the sandbox's
        # media edge then talks only to this candidate.
        "--allow-loopback-in-peer-connection",
    ]


# WebRTC's mDNS responder joins 224.0.0.251 on every interface when a page makes a
# peer connection. Turned off as chrome://flags would, in the profile: a second
# --disable-features would replace the list Playwright passes.
LOCAL_STATE = {
    "browser": {"enabled_labs_experiments": ["enable-webrtc-hide-local-ips-with-mdns@2"]}
}


def caller_wav(tmp_path: Path, name: str = "goforward.wav") -> Path:
    """A copy of a shared recording with a second of silence before and after it.

    The fake microphone starts when the page asks for it, a moment before the
    call is up; the leading silence keeps the first words from being lost.
    """
    with wave.open(str(AUDIO / name)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    silence = np.zeros(rate * channels, np.int16)
    out = tmp_path / f"caller-{name}"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.concatenate([silence, pcm, silence]).tobytes())
    return out


@asynccontextmanager
async def browser_page(tmp_path: Path, wav: Path) -> AsyncIterator[Page]:
    """A page in a fresh headless Chromium profile; fails on any uncaught page error."""
    assert CHROMIUM is not None
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    (profile / "Local State").write_text(json.dumps(LOCAL_STATE))
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=chromium_args(wav),
            viewport={"width": 1100, "height": 720},
        )
        errors: list[str] = []
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
        finally:
            await context.close()
        assert errors == [], errors


@pytest.fixture
async def phone_stack() -> AsyncIterator[PhoneSandbox]:
    """The served stack `gateway sandbox --serve` runs: sandbox, phone page, gateway."""
    stack = await PhoneSandbox.start(bot="echo")
    try:
        yield stack
    finally:
        await stack.aclose()


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail after DEADLINE."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not (result := await check()):
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")
    return result


async def snapshot(page: Page) -> dict[str, Any]:
    """The page's own view of its call (state, analyser, getStats figures)."""
    result: dict[str, Any] = await page.evaluate("window.phone.snapshot()")
    return result


async def call_bot(page: Page, stack: PhoneSandbox, bot: str) -> str:
    """Open the page, pick ``bot``, press Call, wait until answered; the call id."""
    await page.goto(stack.url)
    await page.wait_for_selector(f"#bot option[value='{bot}']", state="attached")
    await page.select_option("#bot", bot)
    await page.click("#call")

    async def answered() -> str | None:
        snap = await snapshot(page)
        assert snap["state"] != "ENDED", f"call ended early: {snap['endReason']}"
        return str(snap["callId"]) if snap["state"] == "ACCEPTED" else None

    call_id: str = await until(answered, "the bot to answer")
    return call_id


async def test_browser_calls_echo_bot_and_both_ends_hear_audio(
    phone_stack: PhoneSandbox, tmp_path: Path
) -> None:
    stack = phone_stack
    async with browser_page(tmp_path, caller_wav(tmp_path)) as page:
        call_id = await call_bot(page, stack, "echo")
        browser_call = stack.phone.calls[call_id]
        gateway_call = stack.gateway.calls.get(call_id)
        assert gateway_call.state is CallState.ACTIVE

        # The gateway got WhatsApp's form of Chromium's offer, as a signed webhook.
        offer = browser_call.offer_sdp
        assert sdp.mids(offer) == ["audio"]
        assert next(ln for ln in sdp.lines(offer) if ln.startswith("m=audio")).endswith(" 111 126")
        rtpmaps = [ln for ln in sdp.lines(offer) if ln.startswith("a=rtpmap:")]
        assert rtpmaps == ["a=rtpmap:111 opus/48000/2", "a=rtpmap:126 telephone-event/8000"]
        assert [ln.split(" ")[0] for ln in sdp.lines(offer) if "fingerprint" in ln] == [
            "a=fingerprint:sha-256"
        ]
        assert "sdes:mid" not in offer
        assert gateway_call.remote_sdp == offer

        # The gateway heard the caller: its VAD closed an utterance of the recording.
        activity = stack.phone.activity[call_id]
        await until(lambda: _ready(activity.utterances_ms), "the gateway to hear an utterance")
        # "go forward ten meters" is 2.8 s long.
        assert sum(activity.utterances_ms) >= 1500, activity.utterances_ms
        assert gateway_call.session is not None
        assert gateway_call.session.metrics.utterances >= 1

        # The browser heard the bot: the echo of that utterance, through WebAudio and getStats.
        async def echo_heard() -> dict[str, Any] | None:
            snap = await snapshot(page)
            return snap if snap["metrics"]["loudWindows"] >= 10 and snap["stats"] else None

        snap = await until(echo_heard, "the browser to hear the echo")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "phone-call.png"))
        stats, metrics = snap["stats"], snap["metrics"]
        relay = browser_call.relay
        figures = {"page": snap, "relay": relay.stats.__dict__, "activity": activity.__dict__}
        (ARTIFACTS / "phone-call.json").write_text(json.dumps(figures, indent=1, default=sorted))
        assert metrics["maxRms"] > 0.1, metrics
        assert stats["codec"] == "audio/opus/48000" and stats["payloadType"] == 111
        assert stats["packetsReceived"] > 50 and stats["bytesReceived"] > 2000, stats
        assert stats["totalAudioEnergy"] > 0.01, stats
        assert stats["bytesSent"] > 2000, stats

        # Media went over loopback only: Chromium's selected pair, and the sandbox's edge.
        assert stats["local"]["address"] == "127.0.0.1", stats
        assert stats["remote"]["address"] == "127.0.0.1", stats
        assert stats["remote"]["port"] == relay.browser_side[1]
        assert relay.gateway is not None and relay.gateway[0] == "127.0.0.1"
        assert relay.browser[0] == "127.0.0.1"
        assert relay.stats.to_gateway > 100 and relay.stats.to_browser > 100
        assert "127.0.0.1" not in relay.stats.dropped_from

        # The person hangs up: a terminate webhook ends the gateway's call.
        await page.click("#call")
        async with asyncio.timeout(DEADLINE):
            await gateway_call.ended.wait()
        record = stack.gateway.calls.history[call_id]
        assert record.terminate_status == "COMPLETED"
        assert (await snapshot(page))["state"] == "ENDED"
        # The user hung up, so the gateway did not terminate: pre_accept and accept only.
        assert [a.action for a in stack.sandbox.actions(call_id)] == ["pre_accept", "accept"]

        # Nothing of the call is left running, on either side.
        async def no_tasks_left() -> bool:
            return not [t for t in asyncio.all_tasks() if call_id in t.get_name() and not t.done()]

        await until(no_tasks_left, "the call's tasks to finish")
        # The page's timeline showed the call as it happened.
        timeline = await page.locator("#events").inner_text()
        assert "bot echo hears an utterance" in timeline
        assert "PRE_ACCEPTED -> ACTIVE" in timeline


async def _ready(items: list[Any]) -> bool:
    return bool(items)


@pytest.mark.parametrize(
    "bot",
    [
        "echo",
        pytest.param(
            "ivr",
            marks=pytest.mark.skipif(
                "ivr" not in available_bots(), reason="the ivr bot is not installed"
            ),
        ),
    ],
)
async def test_keypad_presses_reach_the_bot_as_rfc4733_events(
    phone_stack: PhoneSandbox, tmp_path: Path, bot: str
) -> None:
    stack = phone_stack
    # Silence for a caller who only presses keys.
    async with browser_page(tmp_path, caller_wav(tmp_path, "null.wav")) as page:
        call_id = await call_bot(page, stack, bot)
        activity = stack.phone.activity[call_id]
        gateway_call = stack.gateway.calls.get(call_id)
        key = "#" if bot == "echo" else "1"
        await page.click(f"#keypad button[data-key='{key}']")

        # The gateway decoded the key from telephone-event/8000 packets on PT 126: a
        # 160 ms press measured on an 8 kHz clock (48 kHz would read six times longer).
        await until(lambda: _ready(activity.keys), "the bot to get the key")
        assert activity.keys == [key]
        assert [d for d, _ in activity.dtmf] == [key]
        assert all(100 <= ms <= 500 for _, ms in activity.dtmf), activity.dtmf

        # The bot reacts to the key: the next thing it does is say something.
        def reaction() -> list[str]:
            return activity.log[activity.log.index(f"gets key {key}") + 1 :]

        await until(lambda: _ready(reaction()), "the bot to react")
        assert reaction()[0].startswith("says "), activity.log
        if bot == "echo":
            # '#': goodbye, then the bot hangs up; the page learns it from the sandbox.
            assert reaction()[0] == "says 'Goodbye.'"
            async with asyncio.timeout(DEADLINE):
                await gateway_call.ended.wait()

            async def page_ended() -> dict[str, Any] | None:
                snap = await snapshot(page)
                return snap if snap["state"] == "ENDED" else None

            snap = await until(page_ended, "the page to show the end of the call")
            assert snap["endReason"] == "terminated by the business"
            assert snap["keys"] == "#"
            assert stack.sandbox.actions(call_id)[-1].action == "terminate"
            assert stack.gateway.calls.history[call_id].end_reason == "caller pressed #"
        else:
            await page.click("#call")
            async with asyncio.timeout(DEADLINE):
                await gateway_call.ended.wait()
