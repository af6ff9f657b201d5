"""Business-initiated calls and call permissions, through the sandbox, the HTTP API and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.calls import CallState, SessionFactory
from gateway.cli import main as cli_main
from gateway.events import CallStatus
from gateway.pipeline.bot import BaseBot, CallControl
from gateway.pipeline.plugins import default_tts
from gateway.pipeline.session import session_factory
from gateway.sandbox.user import SimulatedUser

from .audio_checks import loud_frames
from .conftest import API_KEY, PHONE_NUMBER_ID, Stack, start_stack, stop_stack

GREETING = "Hello, this is a reminder of your appointment tomorrow at nine."


class ReminderBot(BaseBot):
    """Says one sentence when the callee answers, then hangs up."""

    async def on_start(self, call: CallControl) -> None:
        await call.say(GREETING)
        await call.hangup("reminder delivered")


def _sessions(name: str) -> SessionFactory:
    return session_factory(ReminderBot, default_tts())


@pytest.fixture
async def api_stack() -> AsyncIterator[Stack]:
    s = await start_stack(api_key=API_KEY, sessions=_sessions, session=_sessions("reminder"))
    try:
        yield s
    finally:
        await stop_stack(s)


def _api(stack: Stack, key: str | None = API_KEY) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=stack.gateway.url, headers=headers, timeout=20)


async def _wait_ended(stack: Stack, call_id: str, seconds: float = 15) -> dict[str, object]:
    async with _api(stack) as api, asyncio.timeout(seconds):
        while True:
            data = (await api.get(f"/calls/{call_id}")).json()
            # Ended, and Meta's terminate webhook has been applied to the record.
            if data["state"] == "ENDED" and data["terminate_status"]:
                return data  # type: ignore[no-any-return]
            await asyncio.sleep(0.1)


async def test_answered_call_bot_speaks_and_callback_data_round_trips(api_stack: Stack) -> None:
    stack = api_stack
    callee = SimulatedUser(stack.sandbox, "15557654321", "Eve", answer="answer")
    stack.sandbox.permissions.grant(callee.wa_id)
    async with _api(stack) as api:
        r = await api.post(
            "/calls", json={"to": callee.wa_id, "biz_opaque_callback_data": "ticket=4711"}
        )
    assert r.status_code == 201, r.text
    call_id = r.json()["call_id"]
    assert r.json()["state"] in ("DIALING", "RINGING")
    heard_call = await asyncio.wait_for(callee.incoming.get(), 5)
    record = await _wait_ended(stack, call_id)
    assert record["end_reason"] == "reminder delivered"
    assert record["terminate_status"] == "COMPLETED"
    assert record["biz_opaque_callback_data"] == "ticket=4711"
    assert "RINGING" in record["statuses"]  # type: ignore[operator]
    # The callee heard the sentence: well over a second of loud audio.
    loud = loud_frames(heard_call.heard, rms=300.0)
    assert loud * 20 > 1200, loud
    actions = [a.action for a in stack.sandbox.actions() if a.action]
    assert actions[0] == "connect" and actions[-1] == "terminate"
    connect = next(a for a in stack.sandbox.actions() if a.action == "connect")
    assert connect.body["session"]["sdp"].count("a=fingerprint:") == 1


async def test_rejected_call(api_stack: Stack) -> None:
    stack = api_stack
    callee = SimulatedUser(stack.sandbox, "15557654322", "Finn", answer="reject")
    stack.sandbox.permissions.grant(callee.wa_id)
    call = await stack.gateway.calls.place_call(callee.wa_id)
    record = await _wait_ended(stack, call.id)
    assert record["end_reason"] == "rejected by the user"
    assert record["statuses"] == ["RINGING", "REJECTED"]
    assert record["terminate_status"] == "FAILED" and record["accepted_at"] is None
    assert [a.action for a in stack.sandbox.actions() if a.action] == ["connect"]


async def test_unanswered_call_times_out_and_is_terminated(api_stack: Stack) -> None:
    stack = api_stack
    callee = SimulatedUser(stack.sandbox, "15557654323", "Gus", answer="ignore")
    stack.sandbox.permissions.grant(callee.wa_id)
    call = await stack.gateway.calls.place_call(callee.wa_id, ring_timeout=1.0)
    record = await _wait_ended(stack, call.id)
    assert record["end_reason"] == "not answered within 1 s"
    terminate = [a for a in stack.sandbox.actions() if a.action == "terminate"]
    assert len(terminate) == 1 and terminate[0].body["call_id"] == call.id
    assert stack.gateway.calls.calls == {}
    assert [
        t for t in asyncio.all_tasks() if t.get_name().startswith(call.id) and not t.done()
    ] == []


async def test_no_permission_138006_through_api_and_cli(api_stack: Stack) -> None:
    stack = api_stack
    SimulatedUser(stack.sandbox, "15557654324", "Hal")
    async with _api(stack) as api:
        r = await api.post("/calls", json={"to": "15557654324"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == 138006 and "permission request first" in error["hint"]
    out = io.StringIO()
    loop = asyncio.get_running_loop()

    def run_cli() -> int:
        with contextlib.redirect_stdout(out):
            return cli_main(
                ["call", "15557654324", "--url", stack.gateway.url, "--api-key", API_KEY]
            )

    code = await loop.run_in_executor(None, run_cli)
    assert code == 1
    assert "138006" in out.getvalue() and "permission" in out.getvalue()
    assert stack.gateway.calls.calls == {}


async def test_permission_request_then_reply_then_call(api_stack: Stack) -> None:
    stack = api_stack
    callee = SimulatedUser(stack.sandbox, "15557654325", "Ida", permission_reply="accept")
    async with _api(stack) as api:
        before = (await api.get(f"/permissions/{callee.wa_id}")).json()
        assert before["status"] == "no_permission" and not before["can_call"]
        r = await api.post(
            f"/permissions/{callee.wa_id}/request", json={"text": "May we call you?"}
        )
        assert r.status_code == 202 and r.json()["message_id"].startswith("wamid.")
        async with asyncio.timeout(5):
            while callee.wa_id not in stack.gateway.calls.permission_replies:
                await asyncio.sleep(0.05)
        after = (await api.get(f"/permissions/{callee.wa_id}")).json()
        assert after["status"] == "temporary" and after["can_call"]
        assert after["last_reply"]["accepted"] is True
        # A second request within 24 h hits the limit (138009).
        again = await api.post(f"/permissions/{callee.wa_id}/request")
        assert again.status_code == 400 and again.json()["error"]["code"] == 138009
        r = await api.post("/calls", json={"to": callee.wa_id})
        assert r.status_code == 201
    record = await _wait_ended(stack, r.json()["call_id"])
    assert record["accepted_at"] is not None and record["end_reason"] == "reminder delivered"


async def test_request_permission_instead_of_calling(api_stack: Stack) -> None:
    stack = api_stack
    SimulatedUser(stack.sandbox, "15557654326", "Jo")
    async with _api(stack) as api:
        r = await api.post("/calls", json={"to": "15557654326", "request_permission": True})
    assert r.status_code == 202
    assert r.json()["permission_requested"] is True and r.json()["error"]["code"] == 138006


async def test_api_key_is_required(api_stack: Stack) -> None:
    stack = api_stack
    for key in (None, "wrong-key"):
        async with _api(stack, key) as api:
            for method, path in (("GET", "/calls"), ("POST", "/calls"), ("GET", "/permissions/1")):
                r = await api.request(method, path, json={"to": "1"})
                assert r.status_code == 401, (key, method, path)
    async with _api(stack, None) as api:
        spec = (await api.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.") and "/calls/{call_id}" in spec["paths"]


async def test_api_is_off_without_a_key(stack: Stack) -> None:
    async with _api(stack) as api:
        assert (await api.get("/calls")).status_code == 404


async def test_callback_data_too_long_is_refused_locally(api_stack: Stack) -> None:
    async with _api(api_stack) as api:
        r = await api.post("/calls", json={"to": "1555", "biz_opaque_callback_data": "x" * 600})
    assert r.status_code == 400 and "512" in r.json()["error"]["message"]
    assert not [a for a in api_stack.sandbox.requests if a.action == "connect"]


async def test_daily_call_cap_138012_says_when_it_resets(api_stack: Stack) -> None:
    stack = api_stack
    callee = SimulatedUser(stack.sandbox, "15557654327", "Kim")
    stack.sandbox.permissions.grant(callee.wa_id)
    for _ in range(100):
        stack.sandbox.permissions.record_call(callee.wa_id, answered=True)
    async with _api(stack) as api:
        r = await api.post("/calls", json={"to": callee.wa_id})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == 138012 and "resets at 20" in error["details"]
    assert "limit" in error["hint"]


async def test_sdp_validation_error_100_shows_details(api_stack: Stack) -> None:
    from gateway.errors import GraphAPIError

    SimulatedUser(api_stack.sandbox, "15557654328", "Lu")
    api_stack.sandbox.permissions.grant("15557654328")
    with pytest.raises(GraphAPIError) as err:
        await api_stack.gateway.graph.connect("15557654328", "v=0\r\nm=video 9 RTP/AVP 0\r\n")
    assert err.value.code == 100
    assert err.value.details is not None and "SDP validation error" in err.value.details
    assert "audio m-line" in err.value.details


async def test_four_unanswered_calls_revoke_permission(api_stack: Stack) -> None:
    stack = api_stack
    callee = SimulatedUser(stack.sandbox, "15557654329", "Mo", answer="ignore")
    stack.sandbox.permissions.grant(callee.wa_id)
    for _ in range(4):
        call = await stack.gateway.calls.place_call(callee.wa_id, ring_timeout=0.3)
        await _wait_ended(stack, call.id)
    async with _api(stack) as api:
        r = await api.post("/calls", json={"to": callee.wa_id})
    assert r.status_code == 400 and r.json()["error"]["code"] == 138006


async def test_cli_call_with_wait_follows_the_call_to_its_end(api_stack: Stack) -> None:
    stack = api_stack
    callee = SimulatedUser(stack.sandbox, "15557654330", "Noa")
    stack.sandbox.permissions.grant(callee.wa_id)
    out = io.StringIO()

    def run_cli() -> int:
        with contextlib.redirect_stdout(out):
            return cli_main(
                [
                    "call",
                    callee.wa_id,
                    "--callback-data",
                    "order=9",
                    "--wait",
                    "--url",
                    stack.gateway.url,
                    "--api-key",
                    API_KEY,
                ]
            )

    code = await asyncio.get_running_loop().run_in_executor(None, run_cli)
    text = out.getvalue()
    assert code == 0, text
    assert f"calling {callee.wa_id}" in text and "ACTIVE" in text and "ENDED" in text
    assert "call ended: reminder delivered" in text
    assert "terminate_status: COMPLETED" in text and "biz_opaque_callback_data: order=9" in text


async def test_every_status_is_in_the_saved_record_whenever_it_comes(stack: Stack) -> None:
    # A status must not wait for the record's next save (a cluster's GET reads the
    # store), nor be dropped because its call ended first.
    calls, store = stack.gateway.calls, stack.gateway.store
    callee = SimulatedUser(stack.sandbox, "15557654329", "Ivy", answer="ignore")
    stack.sandbox.permissions.grant(callee.wa_id)
    call = await calls.place_call(callee.wa_id)
    async with asyncio.timeout(10):
        while call.state is not CallState.RINGING:  # the sandbox's RINGING was handled
            await call.state_changed.wait()
            call.state_changed.clear()
    await calls.flush()
    saved = await store.get_call(call.id)
    assert saved is not None and saved.statuses == ["RINGING"], saved
    await call.end("not answered", terminate=True)
    # The user's REJECTED comes after the call ended here.
    calls.dispatch(CallStatus(call.id, PHONE_NUMBER_ID, "REJECTED", 1700000000))
    await calls.drain()
    await calls.flush()
    saved = await store.get_call(call.id)
    assert saved is not None and saved.statuses == ["RINGING", "REJECTED"], saved
    assert saved.state is CallState.ENDED and saved.end_reason == "not answered"


async def test_a_call_whose_connect_fails_frees_its_decoder(
    api_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Cloud API refuses the connect (no call permission, 138006): the call never
    starts, and its media goes as any call's does, the libopus decoder freed now."""
    from gateway.errors import GraphAPIError
    from gateway.media import inbound
    from gateway.media.opus import OpusDecoder

    made: list[OpusDecoder] = []

    class Recorded(OpusDecoder):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(inbound, "OpusDecoder", Recorded)
    SimulatedUser(api_stack.sandbox, "15557654331", "Oda")  # no permission granted
    with pytest.raises(GraphAPIError) as err:
        await api_stack.gateway.calls.place_call("15557654331")
    assert err.value.code == 138006
    assert len(made) == 1 and made[0].closed
    assert api_stack.gateway.calls.load == 0
