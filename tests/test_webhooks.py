"""The webhook receiver against signed (and badly signed) deliveries from the sandbox."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.errors import WebhookError
from gateway.events import CallConnect, CallStatus, CallTerminate, Direction, PermissionReply
from gateway.sandbox import payloads
from gateway.webhooks import parse_payload, sign, verify_signature

from .conftest import APP_SECRET, PHONE_NUMBER_ID, VERIFY_TOKEN, Stack

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def _connect(call_id: str) -> dict[str, object]:
    return payloads.connect_offer(
        call_id=call_id,
        user="15551230001",
        user_name="Ana",
        business="15550783881",
        phone_number_id=PHONE_NUMBER_ID,
        sdp=OFFER,
    )


def _terminate(call_id: str, status: str = "COMPLETED") -> dict[str, object]:
    return payloads.terminate(
        call_id=call_id,
        from_="15551230001",
        to="15550783881",
        business="15550783881",
        phone_number_id=PHONE_NUMBER_ID,
        direction="USER_INITIATED",
        status=status,
    )


# --- signatures ----------------------------------------------------------------


def test_signature_roundtrip_and_refusals() -> None:
    body = b'{"a": 1}'
    verify_signature(body, sign(body, "s3cret"), "s3cret")
    with pytest.raises(WebhookError) as missing:
        verify_signature(body, None, "s3cret")
    assert missing.value.status == 401
    with pytest.raises(WebhookError) as wrong:
        verify_signature(body + b" ", sign(body, "s3cret"), "s3cret")
    assert wrong.value.status == 401 and "does not match" in wrong.value.message
    with pytest.raises(WebhookError):
        verify_signature(body, sign(body, "other-secret"), "s3cret")


async def test_unsigned_and_badly_signed_deliveries_get_401(stack: Stack) -> None:
    body = json.dumps(payloads.envelope([_connect("wacid.unsigned")])).encode()
    r = await stack.sandbox.post_raw(body, signature=None)
    assert r.status_code == 401 and "missing" in r.json()["error"]
    r = await stack.sandbox.post_raw(body, signature=sign(body, "not-the-secret"))
    assert r.status_code == 401
    r = await stack.sandbox.post_raw(body, signature="sha1=abc")
    assert r.status_code == 401
    await stack.gateway.calls.drain()
    assert stack.gateway.calls.calls == {} and not stack.gateway.calls.history


async def test_verification_handshake(stack: Stack) -> None:
    async with httpx.AsyncClient() as client:
        ok = await client.get(
            f"{stack.gateway.url}/webhook",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": VERIFY_TOKEN,
                "hub.challenge": "1158201444",
            },
        )
        assert ok.status_code == 200 and ok.text == "1158201444"
        bad = await client.get(
            f"{stack.gateway.url}/webhook",
            params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "x"},
        )
        assert bad.status_code == 403
        health = await client.get(f"{stack.gateway.url}/healthz")
        assert health.json()["status"] == "ok"


async def test_malformed_json_and_shapes_get_400(stack: Stack) -> None:
    for body in (b"{not json", b"\xff\xfe", b"[1, 2]", b'{"entry": 5}'):
        r = await stack.sandbox.post_raw(body, signature=sign(body, APP_SECRET))
        assert r.status_code == 400, body
        assert "error" in r.json()
    # A connect without SDP: 400 naming the place, and nothing is started.
    bad = _connect("wacid.nosdp")
    del bad["value"]["calls"][0]["session"]  # type: ignore[index]
    r = await stack.sandbox.deliver(bad)
    assert r.status_code == 400
    assert "calls[0].session.sdp" in r.json()["problems"][0]
    await stack.gateway.calls.drain()
    assert stack.gateway.calls.calls == {}


async def test_unknown_fields_and_other_fields_are_tolerated(stack: Stack) -> None:
    change = _terminate("wacid.extra")
    change["value"]["brand_new_field"] = {"x": 1}  # type: ignore[index]
    change["value"]["calls"][0]["future"] = [1, 2]  # type: ignore[index]
    other = {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}
    message = {
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "messages": [{"type": "text", "text": {"body": "hi"}}],
        },
    }
    r = await stack.sandbox.deliver(change, other, message)
    assert r.status_code == 200
    assert r.json() == {"received": 1}


async def test_thousand_change_batch(stack: Stack) -> None:
    # 1000 changes are ~400 kB: over the default cap, so raise it as an operator would.
    stack.gateway.webhooks.max_body_bytes = 1024 * 1024
    changes = [_terminate(f"wacid.batch{i}") for i in range(1000)]
    r = await stack.sandbox.deliver(*changes)
    assert r.status_code == 200 and r.json() == {"received": 1000}
    await stack.gateway.calls.drain()
    # Each terminate came before any connect, so each is remembered for its connect.
    assert len(stack.gateway.calls.early.terminates) == 1000


def test_parse_thousand_connects_in_one_delivery() -> None:
    body = payloads.envelope([_connect(f"wacid.c{i}") for i in range(1000)])
    events, problems = parse_payload(json.loads(json.dumps(body)))
    assert problems == []
    assert len(events) == 1000
    first = events[0]
    assert isinstance(first, CallConnect)
    assert first.direction is Direction.USER_INITIATED and first.sdp_type == "offer"
    assert first.contact is not None and first.contact.name == "Ana"


async def test_duplicates_are_processed_once(stack: Stack) -> None:
    change = _terminate("wacid.dup")
    for _ in range(3):
        r = await stack.sandbox.deliver(change)
        assert r.status_code == 200
    await stack.gateway.calls.drain()
    assert stack.gateway.webhooks.duplicates == 2
    assert list(stack.gateway.calls.early.terminates) == ["wacid.dup"]


def test_parse_all_event_kinds_leniently() -> None:
    term = _terminate("wacid.t", status="Failed")
    term["value"]["errors"] = [{"code": 138021, "title": "No media received"}]  # type: ignore[index]
    status = payloads.call_status(
        call_id="wacid.s",
        status="ringing",
        recipient="15551230001",
        business="15550783881",
        phone_number_id=PHONE_NUMBER_ID,
        biz_opaque_callback_data="ticket-7",
    )
    reply = payloads.permission_reply(
        user="15551230001",
        user_name="Ana",
        business="15550783881",
        phone_number_id=PHONE_NUMBER_ID,
        context_id="wamid.abc",
        accept=True,
        permanent=True,
    )
    legacy = payloads.connect_answer(
        call_id="wacid.b",
        user="15551230001",
        user_name="Ana",
        business="15550783881",
        phone_number_id=PHONE_NUMBER_ID,
        sdp=OFFER,
    )
    call = legacy["value"]["calls"][0]  # type: ignore[index]
    call["connection"] = {"webrtc": {"sdp": call.pop("session")["sdp"]}}
    events, problems = parse_payload(payloads.envelope([term, status, reply, legacy]))
    assert problems == []
    t, s, p, c = events
    assert isinstance(t, CallTerminate) and t.status == "FAILED"
    assert t.errors[0].code == 138021 and t.errors[0].message == "No media received"
    assert (
        isinstance(s, CallStatus)
        and s.status == "RINGING"
        and s.biz_opaque_callback_data == "ticket-7"
    )
    assert (
        isinstance(p, PermissionReply)
        and p.accepted
        and p.permanent
        and p.context_id == "wamid.abc"
    )
    assert isinstance(c, CallConnect) and c.sdp_type == "answer" and c.sdp == OFFER


async def test_metrics_are_prometheus_text(stack: Stack) -> None:
    from gateway.metrics import parse_prometheus

    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{stack.gateway.url}/metrics")).text
    values = parse_prometheus(text)
    assert "# TYPE process_cpu_seconds_total counter" in text
    assert values["process_cpu_seconds_total"] > 0
    assert values["process_resident_memory_bytes"] > 10 * 2**20
    assert values["gateway_calls_active"] == 0
    assert "gateway_event_loop_lag_p99_seconds" in values
