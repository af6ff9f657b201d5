"""The Graph API failing every way on every action: one scenario per (action, failure).

Each scenario drives a real call through the gateway while the sandbox's Graph
API fails one action persistently, then checks that the call ended (no live
call, no task), kept its record, and that no webhook got a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass

import httpx

from gateway.calls import CallState
from gateway.errors import GraphAPIError
from gateway.graph import RetryPolicy
from gateway.sandbox.failures import Failure
from gateway.sandbox.user import SimulatedUser

from .conftest import Stack

ACTIONS = ("connect", "pre_accept", "accept", "reject", "terminate")
# (label, how, HTTP status, Retry-After)
FAILURES: tuple[tuple[str, Failure | None, int, float | None], ...] = (
    ("HTTP 500", Failure.GRAPH_ERROR, 500, None),
    ("429 + Retry-After", Failure.GRAPH_ERROR, 429, 0.2),
    ("timeout", Failure.TIMEOUT, 504, None),
    ("connection dropped", Failure.DISCONNECT, 0, None),
    ("connection refused", None, 0, None),
    ("malformed JSON", Failure.MALFORMED_JSON, 502, None),
    ("title-only error", Failure.TITLE_ONLY, 400, None),
)
# Short enough to keep the suite quick; the retry logic itself is unchanged.
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, deadline=3.0)
CLIENT_TIMEOUT = 0.5


@dataclass
class Outcome:
    """What one scenario measured."""

    seconds_to_end: float
    stuck: int
    records_lost: int
    responses_5xx: int
    failed_attempts: int
    """Requests for the action that failed (the injection really happened)."""


class _RefuseAction(httpx.AsyncBaseTransport):
    """Sends requests for one Graph action to a port nobody listens on."""

    def __init__(self, inner: httpx.AsyncBaseTransport, action: str) -> None:
        self.inner = inner
        self.action = action
        self.refused = 0
        with socket.socket() as s:  # a free port, closed again: connections are refused
            s.bind(("127.0.0.1", 0))
            self.dead_port = s.getsockname()[1]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            action = json.loads(request.content).get("action")
        except ValueError:
            action = None
        if action == self.action:
            self.refused += 1
            request.url = request.url.copy_with(port=self.dead_port)
        return await self.inner.handle_async_request(request)


def _inject(
    stack: Stack, action: str, how: Failure | None, status: int, retry: float | None
) -> None:
    graph = stack.gateway.graph
    graph.retry = FAST_RETRY
    graph._client.timeout = httpx.Timeout(CLIENT_TIMEOUT)
    if how is None:
        client = graph._client
        client._transport = _RefuseAction(client._transport, action)
        return
    stack.sandbox.fail_next(
        action,
        how=how,
        status=status or 500,
        code=1 if status >= 500 else 80007 if status == 429 else 100,
        message="(#1) injected failure",
        retry_after=retry,
        delay=CLIENT_TIMEOUT * 4,
        times=1000,
    )


async def run(stack: Stack, action: str, failure: str) -> Outcome:
    """Run one scenario on a fresh ``stack``."""
    _label, how, status, retry = next(f for f in FAILURES if f[0] == failure)
    loop = asyncio.get_running_loop()
    manager = stack.gateway.calls
    user = SimulatedUser(stack.sandbox, "15551234567", "Fay")
    call_id: str | None = None
    if action == "connect":
        stack.sandbox.permissions.grant(user.wa_id)
        _inject(stack, action, how, status, retry)
        start = loop.time()
        try:
            await manager.place_call(user.wa_id)
        except GraphAPIError:
            pass
        else:
            raise AssertionError("connect succeeded through an injected failure")
        seconds = loop.time() - start
        lost = 0
    else:
        if action == "reject":
            manager.max_calls = 0  # every call is refused with reject
        if action in ("pre_accept", "accept", "reject"):
            _inject(stack, action, how, status, retry)
        start = loop.time()
        call = await user.place_call()
        call_id = call.call_id
        if action == "terminate":
            async with asyncio.timeout(15):
                await call.media_up.wait()
                while manager.calls[call_id].state is not CallState.ACTIVE:
                    await asyncio.sleep(0.01)
            _inject(stack, action, how, status, retry)
            start = loop.time()
            manager.calls[call_id].end("business hangs up", terminate=True)
        if action == "reject":
            await manager.drain()  # the connect was handled: the reject is under way
            await _tasks_done(manager)
            seconds = loop.time() - start
            lost = 0
        else:
            async with asyncio.timeout(30):
                while call_id not in manager.history:
                    await asyncio.sleep(0.01)
            seconds = loop.time() - start
            record = manager.history[call_id]
            lost = 0 if record.state is CallState.ENDED and record.end_reason else 1
        await call.close()
    await _tasks_done(manager)
    transport = stack.gateway.graph._client._transport
    failed = sum(1 for r in stack.sandbox.requests if r.action == action and r.status != 200)
    if isinstance(transport, _RefuseAction):
        failed = transport.refused
    return Outcome(
        seconds_to_end=seconds,
        stuck=len(manager.calls) + manager._dialing,
        records_lost=lost,
        responses_5xx=sum(n for code, n in stack.sandbox.webhook_statuses.items() if code >= 500),
        failed_attempts=failed,
    )


async def _tasks_done(manager: object) -> None:
    # The manager's own tasks (rejects) and every call's tasks.
    async with asyncio.timeout(15):
        while getattr(manager, "_tasks", None):
            await asyncio.sleep(0.01)
