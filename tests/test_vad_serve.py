"""`gateway serve` gives its live calls the turn-taking its settings ask for."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from gateway.sandbox.cloud import CloudAPISandbox
from gateway.sandbox.user import SimulatedUser

from .cluster_stack import serve_env, start_serve
from .conftest import ACCESS_TOKEN, APP_SECRET, PHONE_NUMBER_ID


async def test_serve_passes_the_vad_setting_to_live_calls(tmp_path: Path) -> None:
    sandbox = CloudAPISandbox(
        webhook_url="",
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
    )
    await sandbox.start()
    try:
        await _call_and_check(sandbox, tmp_path)
    finally:
        await sandbox.aclose()


async def _call_and_check(sandbox: CloudAPISandbox, tmp: Path) -> None:
    log = tmp / "serve.log"
    env = serve_env(sandbox, GATEWAY_DATA_DIR=str(tmp), GATEWAY_VAD_VOICE_GATE="0")
    proc, url = await start_serve(env, log)
    sandbox.webhook_url = f"{url}/webhook"
    call = None
    try:
        call = await SimulatedUser(sandbox, "15551239001", "Vera").place_call(inbound=False)
        async with asyncio.timeout(30):
            await call.media_up.wait()
            # The call's session logs the turn-taking it was built with.
            line = f"call {call.call_id}: turn-taking with the VAD voice gate "
            while line not in log.read_text():
                await asyncio.sleep(0.05)
        text = log.read_text()
        assert f"{line}off" in text
        assert f"{line}on" not in text
    finally:
        if call is not None:
            await call.hang_up()
        proc.send_signal(signal.SIGTERM)  # drains: the call has ended
        try:
            async with asyncio.timeout(30):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
