"""Shared fixtures: a real gateway wired to the project's Cloud API sandbox, on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aioice.ice
import pytest
import pytest_asyncio

from gateway.calls import CallState, SessionFactory
from gateway.media.dtmf import add_telephone_event_codec
from gateway.media.ice import use_host_addresses
from gateway.sandbox.cloud import CloudAPISandbox
from gateway.sandbox.stack import LocalStack, start_local_stack
from gateway.sandbox.user import SimulatedUser, UserCall

if TYPE_CHECKING:
    from gateway.cluster.redis_server import RedisServer

    from .cluster_stack import Cluster

# aiosqlite logs every statement at DEBUG; the store's own log lines say what matters.
logging.getLogger("aiosqlite").setLevel(logging.INFO)

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"

APP_SECRET = "test-app-secret"
ACCESS_TOKEN = "test-access-token"
VERIFY_TOKEN = "test-verify-token"
PHONE_NUMBER_ID = "106540352242922"
API_KEY = "test-api-key"


Stack = LocalStack


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the test item (``item.rep_call``), so that a fixture's
    teardown can tell that its test failed (e.g. to keep a worker's log)."""
    report: pytest.TestReport = yield
    setattr(item, f"rep_{report.when}", report)
    return report


async def start_stack(
    *,
    max_calls: int = 10,
    session: SessionFactory | None = None,
    sessions: Callable[[str], SessionFactory] | None = None,
    bot: str = "echo",
    api_key: str | None = None,
    env: dict[str, str] | None = None,
) -> Stack:
    """The sandbox (with the tests' fixed secrets) and a gateway, on free loopback ports."""
    sandbox = CloudAPISandbox(
        webhook_url="",  # set once the gateway has its port
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
    )
    return await start_local_stack(
        sandbox,
        bot=bot,
        session=session,
        sessions=sessions,
        max_calls=max_calls,
        api_key=api_key,
        verify_token=VERIFY_TOKEN,
        env=env,
    )


async def stop_stack(stack: Stack) -> None:
    """Stop both sides."""
    await stack.aclose()


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw aiortc peers gather host candidates on 127.0.0.1 only (restored after the test)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    use_host_addresses(["127.0.0.1"])


@pytest.fixture
def telephone_events() -> None:
    """aiortc offers RFC 4733 telephone-event, as the gateway's peers do (idempotent)."""
    add_telephone_event_codec()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """A gateway with no bot session, and its sandbox."""
    s = await start_stack()
    try:
        yield s
    finally:
        await stop_stack(s)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault suite's figures (``make faults``) as one table."""
    from .fault_figures import ROWS

    if not ROWS:
        return
    terminalreporter.write_sep("=", "fault suite figures")
    width = max(len(row) for row, _ in ROWS)
    for row, figures in ROWS:
        terminalreporter.write_line(f"{row:<{width}}  {figures}")


async def answered_call(
    stack: Stack, wa_id: str = "15551230001", name: str = "Ana", *, within: float = 15
) -> UserCall:
    """A simulated user's call, once media is up and the gateway has it ACTIVE."""
    call = await SimulatedUser(stack.sandbox, wa_id, name).place_call()
    async with asyncio.timeout(within):
        await call.media_up.wait()
        while stack.gateway.calls.get(call.call_id).state is not CallState.ACTIVE:
            await asyncio.sleep(0.01)
    return call


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A private redis-server on a free port (for cluster pieces in one process)."""
    from gateway.cluster.redis_server import RedisServer

    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


# One cluster (real Redis, three worker processes) per test module that asks for it.
@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    from .cluster_stack import start_cluster  # it imports this module's constants

    c = await start_cluster(tmp_path_factory.mktemp("cluster"), workers=3)
    try:
        yield c
    finally:
        await c.aclose()
