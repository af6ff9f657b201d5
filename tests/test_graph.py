"""The Graph API client against the sandbox's fake Graph API."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError, GraphAPIError
from gateway.graph import GraphClient, RetryPolicy
from gateway.sandbox.failures import Failure

from .conftest import ACCESS_TOKEN, PHONE_NUMBER_ID, Stack


def _client(stack: Stack, **kw: object) -> GraphClient:
    return GraphClient(
        base_url=stack.sandbox.graph_url,
        access_token=ACCESS_TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
        retry=RetryPolicy(base_delay=0.01, max_delay=0.05, **kw),  # type: ignore[arg-type]
    )


async def test_5xx_then_success_is_retried(stack: Stack) -> None:
    stack.sandbox.fail_next(
        "reject", status=503, code=2, message="Service temporarily unavailable", times=2
    )
    client = _client(stack)
    try:
        # An unknown call id is refused by the sandbox (code 100) once the 5xx stop.
        with pytest.raises(GraphAPIError) as err:
            await client.reject("wacid.unknown")
    finally:
        await client.aclose()
    attempts = [r for r in stack.sandbox.requests if r.action == "reject"]
    assert [r.status for r in attempts] == [503, 503, 400]
    assert err.value.code == 100 and not err.value.retryable


async def test_retries_stop_at_the_attempt_limit(stack: Stack) -> None:
    stack.sandbox.fail_next("terminate", status=500, code=1, times=10)
    client = _client(stack, attempts=3)
    try:
        with pytest.raises(GraphAPIError) as err:
            await client.terminate("wacid.x")
    finally:
        await client.aclose()
    assert err.value.status == 500 and err.value.retryable
    assert len([r for r in stack.sandbox.requests if r.action == "terminate"]) == 3


async def test_138006_is_typed_and_not_retried(stack: Stack) -> None:
    stack.sandbox.fail_next(
        "connect",
        code=138006,
        message="No approved call permission from the recipient",
        details="Send a call permission request first",
    )
    client = _client(stack)
    try:
        with pytest.raises(GraphAPIError) as err:
            await client.connect("15551230001", "v=0\r\n")
    finally:
        await client.aclose()
    e = err.value
    assert (e.status, e.code) == (400, 138006)
    assert e.details == "Send a call permission request first"
    assert "permission" in str(e) and e.fbtrace_id
    assert len([r for r in stack.sandbox.requests if r.action == "connect"]) == 1


async def test_wrong_token_gets_graph_auth_error(stack: Stack) -> None:
    client = GraphClient(
        base_url=stack.sandbox.graph_url, access_token="wrong", phone_number_id=PHONE_NUMBER_ID
    )
    try:
        with pytest.raises(GraphAPIError) as err:
            await client.terminate("wacid.x")
    finally:
        await client.aclose()
    assert (err.value.status, err.value.code) == (401, 190)


async def test_network_error_is_typed(stack: Stack) -> None:
    client = GraphClient(
        base_url="http://127.0.0.1:9/v23.0",
        access_token=ACCESS_TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
        retry=RetryPolicy(attempts=2, base_delay=0.01),
    )
    try:
        with pytest.raises(GraphAPIError) as err:
            await client.terminate("wacid.x")
    finally:
        await client.aclose()
    assert err.value.status == 0 and err.value.retryable


async def test_callback_data_over_512_is_refused_locally(stack: Stack) -> None:
    client = _client(stack)
    try:
        with pytest.raises(GatewayError, match="at most 512"):
            await client.connect("15551230001", "v=0\r\n", biz_opaque_callback_data="x" * 513)
    finally:
        await client.aclose()
    assert not [r for r in stack.sandbox.requests if r.action == "connect"]


async def test_429_waits_for_retry_after(stack: Stack) -> None:
    stack.sandbox.fail_next("reject", status=429, code=80007, retry_after=0.4)
    client = _client(stack)
    try:
        with pytest.raises(GraphAPIError):  # the unknown call id, once the 429 is over
            await client.reject("wacid.unknown")
    finally:
        await client.aclose()
    first, second = (r for r in stack.sandbox.requests if r.action == "reject")
    assert first.status == 429 and second.status == 400
    # Backoff alone would have waited at most 0.01 s (base_delay); a sleep is never short.
    assert second.at - first.at >= 0.4


async def test_title_only_and_non_json_errors_are_typed(stack: Stack) -> None:
    stack.sandbox.fail_next(
        "reject", status=400, code=131000, message="Something went wrong", how=Failure.TITLE_ONLY
    )
    stack.sandbox.fail_next("terminate", status=502, code=1, how=Failure.MALFORMED_JSON)
    client = _client(stack, attempts=1)
    try:
        with pytest.raises(GraphAPIError) as title:
            await client.reject("wacid.x")
        with pytest.raises(GraphAPIError) as html:
            await client.terminate("wacid.x")
    finally:
        await client.aclose()
    assert title.value.code == 131000 and title.value.message == "Something went wrong"
    assert html.value.status == 502 and html.value.retryable and html.value.code is None
