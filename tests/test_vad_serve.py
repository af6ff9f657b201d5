"""`gateway serve` gives its live calls the turn-taking its settings ask for."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from gateway.sandbox.cloud import CloudAPISandbox
from gateway.sandbox.user import SimulatedUser

from .conftest import ACCESS_TOKEN, API_KEY, APP_SECRET, PHONE_NUMBER_ID, VERIFY_TOKEN


async def _serve(
    sandbox: CloudAPISandbox, tmp: Path, **env: str
) -> tuple[asyncio.subprocess.Process, Path]:
    """A `gateway serve` process answering the sandbox's calls with the echo bot."""
    log = tmp / "serve.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            env={
                **os.environ,
                "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
                "WHATSAPP_APP_SECRET": APP_SECRET,
                "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
                "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
                "WHATSAPP_GRAPH_URL": sandbox.graph_url,
                "GATEWAY_PORT": "0",
                "GATEWAY_MEDIA_ADDRESSES": "127.0.0.1",
                "GATEWAY_BOT": "echo",
                "GATEWAY_API_KEY": API_KEY,
                "GATEWAY_DATA_DIR": str(tmp),
                "GATEWAY_LOG_LEVEL": "INFO",
                **env,
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            while b"serving webhooks on" not in (line := await proc.stdout.readline()):
                assert line, f"gateway serve did not start:\n{log.read_text()}"
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    url = line.decode().split("serving webhooks on ")[1].split("/webhook")[0]
    sandbox.webhook_url = f"{url}/webhook"
    return proc, log


async def test_serve_passes_the_vad_setting_to_live_calls(tmp_path: Path) -> None:
    sandbox = CloudAPISandbox(
        webhook_url="",
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
    )
    await sandbox.start()
    proc, log = await _serve(sandbox, tmp_path, GATEWAY_VAD_VOICE_GATE="0")
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
        await sandbox.aclose()
