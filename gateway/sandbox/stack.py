"""A gateway and the sandbox wired together on loopback: the demo, the phone page,
the tests and the benchmarks all start one of these."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from ..app import Gateway
from ..call import SessionFactory
from ..config import load_settings
from .cloud import CloudAPISandbox


@dataclass
class LocalStack:
    """A running gateway and the sandbox that plays Meta and the users for it."""

    gateway: Gateway
    sandbox: CloudAPISandbox
    # A data dir made for this stack alone, removed when it closes.
    temp_dir: str | None = None

    async def aclose(self) -> None:
        """Gateway first: its shutdown terminates calls through the (still running) sandbox."""
        try:
            await self.gateway.aclose()
        finally:
            await self.sandbox.aclose()
            if self.temp_dir is not None:
                shutil.rmtree(self.temp_dir, ignore_errors=True)


async def start_local_stack(
    sandbox: CloudAPISandbox | None = None,
    *,
    bot: str = "echo",
    session: SessionFactory | None = None,
    sessions: Callable[[str], SessionFactory] | None = None,
    max_calls: int = 100,
    api_key: str | None = None,
    verify_token: str | None = None,
    env: dict[str, str] | None = None,
    data_dir: str | None = None,
) -> LocalStack:
    """Start ``sandbox`` (a fresh one by default), then a gateway pointed at it.

    The gateway listens on a free loopback port and offers only 127.0.0.1 as
    ICE candidate, so nothing leaves the machine. ``env`` adds gateway settings
    (e.g. ``GATEWAY_RECORDINGS_DIR``). The store lives in ``data_dir``, or in a
    temporary directory removed with the stack (demo calls are not history).
    """
    if sandbox is None:
        sandbox = CloudAPISandbox(
            webhook_url="", app_secret=secrets.token_hex(16), access_token=secrets.token_hex(16)
        )
    temp_dir = None if data_dir else tempfile.mkdtemp(prefix="gateway-data-")
    await sandbox.start()
    try:
        settings = {
            "WHATSAPP_ACCESS_TOKEN": sandbox.access_token,
            "WHATSAPP_APP_SECRET": sandbox.app_secret,
            "WHATSAPP_VERIFY_TOKEN": verify_token or secrets.token_hex(8),
            "WHATSAPP_PHONE_NUMBER_ID": sandbox.phone_number_id,
            "WHATSAPP_GRAPH_URL": sandbox.graph_url,
            "GATEWAY_PORT": "0",
            "GATEWAY_MEDIA_ADDRESSES": "127.0.0.1",
            "GATEWAY_BOT": bot,
            "GATEWAY_MAX_CALLS": str(max_calls),
            "GATEWAY_DATA_DIR": data_dir or str(temp_dir),
            **(env or {}),
        }
        if api_key:
            settings["GATEWAY_API_KEY"] = api_key
        gateway = Gateway(load_settings(settings), session=session, sessions=sessions)
        await gateway.start()
    except BaseException:
        await sandbox.aclose()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    sandbox.webhook_url = f"{gateway.url}/webhook"
    return LocalStack(gateway, sandbox, temp_dir)
