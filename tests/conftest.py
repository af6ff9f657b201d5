"""Shared fixtures: a real gateway wired to the project's Cloud API sandbox, on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.calls import SessionFactory
from gateway.config import load_settings
from gateway.sandbox.cloud import CloudAPISandbox

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"

APP_SECRET = "test-app-secret"
ACCESS_TOKEN = "test-access-token"
VERIFY_TOKEN = "test-verify-token"
PHONE_NUMBER_ID = "106540352242922"


@dataclass
class Stack:
    """A running gateway and the sandbox that plays Meta and the users."""

    gateway: Gateway
    sandbox: CloudAPISandbox


API_KEY = "test-api-key"


async def start_stack(
    *,
    max_calls: int = 10,
    session: SessionFactory | None = None,
    sessions: Callable[[str], SessionFactory] | None = None,
    bot: str = "echo",
    api_key: str | None = None,
) -> Stack:
    """Start the sandbox's Graph API, then a gateway pointed at it, on free ports."""
    sandbox = CloudAPISandbox(
        webhook_url="http://127.0.0.1:0/webhook",  # set once the gateway has its port
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
    )
    await sandbox.start()
    settings = load_settings(
        {
            "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
            "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
            "WHATSAPP_GRAPH_URL": sandbox.graph_url,
            "GATEWAY_PORT": "0",
            "GATEWAY_MAX_CALLS": str(max_calls),
            "GATEWAY_MEDIA_ADDRESSES": "127.0.0.1",
            "GATEWAY_BOT": bot,
            **({"GATEWAY_API_KEY": api_key} if api_key else {}),
        }
    )
    gateway = Gateway(settings, session=session, sessions=sessions)
    await gateway.start()
    sandbox.webhook_url = f"{gateway.url}/webhook"
    return Stack(gateway, sandbox)


async def stop_stack(stack: Stack) -> None:
    """Stop both sides."""
    # Gateway first: its shutdown terminates calls through the (still running) sandbox.
    await stack.gateway.aclose()
    await stack.sandbox.aclose()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """A gateway with no bot session, and its sandbox."""
    s = await start_stack()
    try:
        yield s
    finally:
        await stop_stack(s)
