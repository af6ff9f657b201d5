"""The operator page in headless Chromium: a live call, a recent call with its timeline,
transcript and recording player, and the key metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from playwright.async_api import Page, async_playwright

from gateway.media.audio import load_wav
from gateway.pipeline.plugins import session_for

from .conftest import API_KEY, AUDIO, answered_call, start_stack, stop_stack
from .test_browser_phone import ARTIFACTS, CHROMIUM, DEADLINE

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--no-proxy-server",
]


async def text_of(page: Page, selector: str) -> str:
    return await page.locator(selector).inner_text(timeout=DEADLINE * 1000)


async def test_dashboard_shows_calls_in_chromium(tmp_path: Path) -> None:
    stack = await start_stack(
        session=session_for("echo"),
        api_key=API_KEY,
        env={"GATEWAY_RECORDINGS_DIR": str(tmp_path / "recordings")},
    )
    try:
        async with httpx.AsyncClient(base_url=stack.gateway.url) as client:
            refused = await client.get("/dashboard")
            wrong = await client.get("/dashboard/api/state", auth=("ops", "wrong"))
        assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
        assert wrong.status_code == 401

        # A first call: the caller speaks, the echo bot answers, the caller hangs up.
        first = await answered_call(stack, "15551230001", "Ana Lima", within=DEADLINE)
        await first.play(load_wav(AUDIO / "cards-001.wav")).wait()
        gw_first = stack.gateway.calls.get(first.call_id)
        async with asyncio.timeout(DEADLINE):
            while not gw_first.session.metrics.response_latencies_ms:
                await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # the echo plays out
        # What an agent bot keeps on the record (gateway.agent); the echo bot keeps none.
        now = time.time()
        gw_first.record.conversation = [  # type: ignore[attr-defined]
            {"at": now - 3, "role": "user", "text": "I'd like to check my card balance."},
            {"at": now - 2, "role": "assistant", "text": "Sure, one moment please."},
        ]
        await first.hang_up()
        async with asyncio.timeout(DEADLINE):
            while first.call_id not in stack.gateway.calls.history:
                await asyncio.sleep(0.01)
        assert stack.gateway.recordings is not None
        await stack.gateway.recordings.wait(first.call_id)

        # A second call stays up while the page is open.
        second = await answered_call(stack, "15551230002", "Ben Okafor", within=DEADLINE)
        second.play(load_wav(AUDIO / "cards-003.wav"))

        assert CHROMIUM is not None
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = await browser.new_context(
                http_credentials={"username": "operator", "password": API_KEY},
                viewport={"width": 1280, "height": 860},
            )
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{stack.gateway.url}/dashboard")

            live = page.locator(f'#live-rows tr[data-call-id="{second.call_id}"]')
            await live.wait_for(timeout=DEADLINE * 1000)
            row = await live.inner_text()
            assert "ACTIVE" in row and "Ben Okafor" in row and "EchoBot" in row

            async def packets_in() -> int:
                cells = live.locator("td")
                return int(await cells.nth(5).inner_text())

            async with asyncio.timeout(DEADLINE):
                while await packets_in() < 50:
                    await asyncio.sleep(0.2)
            assert "1 / 10" in await text_of(page, "#tiles")

            recent = page.locator(f'#recent-rows tr[data-call-id="{first.call_id}"]')
            await recent.click(timeout=DEADLINE * 1000)
            timeline = await text_of(page, "#details-timeline")
            assert "answered" in timeline
            assert "terminated by WhatsApp (completed)" in timeline
            assert "WhatsApp: COMPLETED" in timeline
            transcript = await text_of(page, "#details-transcript")
            assert "card balance" in transcript and "one moment" in transcript

            # Chromium loads the recording in the player and decodes both channels.
            await page.wait_for_function(
                "() => { const a = document.getElementById('details-audio');"
                " return a.readyState >= 1 && a.duration > 1; }",
                timeout=DEADLINE * 1000,
            )
            channels = await page.evaluate(
                """async () => {
                    const src = document.getElementById('details-audio').src;
                    const data = await (await fetch(src)).arrayBuffer();
                    const ctx = new OfflineAudioContext(2, 16000, 16000);
                    const buffer = await ctx.decodeAudioData(data);
                    const energy = (ch) => buffer.getChannelData(ch).reduce((s, x) => s + x * x, 0);
                    return [buffer.numberOfChannels, energy(0), energy(1)];
                }"""
            )
            assert channels[0] == 2 and channels[1] > 0 and channels[2] > 0, channels

            await page.wait_for_timeout(1200)  # one more poll: CPU per call-second
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            await browser.close()
        assert errors == [], errors
        await second.hang_up()
    finally:
        await stop_stack(stack)
