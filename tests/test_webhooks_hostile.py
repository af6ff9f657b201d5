"""Hostile and broken deliveries: every signed one gets 200 or a deliberate 4xx.

The cases are the ones that once raised inside the receiver (HTTP 500, which
Meta retries for days) or started a call that could never end.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.errors import WebhookError
from gateway.logsafe import clip
from gateway.sandbox import payloads
from gateway.webhooks import (
    DEFAULT_MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    decode_json,
    parse_payload,
    sign,
)

from .conftest import APP_SECRET, PHONE_NUMBER_ID, Stack


def _connect(call_id: str = "wacid.hostile") -> dict[str, Any]:
    return payloads.connect_offer(
        call_id=call_id,
        user="15551230001",
        user_name="Ana",
        business="15550783881",
        phone_number_id=PHONE_NUMBER_ID,
        sdp="v=0\r\n",
    )


def _with(path: tuple[str | int, ...], value: Any) -> bytes:
    """A connect delivery with the item at ``path`` (inside the change) replaced."""
    body = payloads.envelope([_connect()])
    node: Any = body["entry"][0]["changes"][0]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(body).encode()


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


HOSTILE: dict[str, bytes] = {
    "calls is a number": _with(("value", "calls"), 5),
    "calls is a bool": _with(("value", "calls"), True),
    "statuses is a number": _with(("value", "statuses"), 1.5),
    "messages is a bool": _raw(
        json.dumps(payloads.envelope([{"field": "messages", "value": {"messages": True}}]))
    ),
    "value is a number": _with(("value",), 7),
    "metadata is a list": _with(("value", "metadata"), [1, 2]),
    "connection is a number": _with(("value", "calls", 0, "session"), None).replace(
        b'"session": null', b'"session": null, "connection": 3'
    ),
    "from is nested": _with(("value", "calls", 0, "from"), {"a": [{"b": 1}]}),
    "sdp_type is a list": _with(("value", "calls", 0, "session", "sdp_type"), ["offer"]),
    "direction is an object": _with(("value", "calls", 0, "direction"), {"x": 1}),
    "timestamp Infinity": _with(("value", "calls", 0, "timestamp"), 0).replace(
        b'"timestamp": 0', b'"timestamp": Infinity'
    ),
    "timestamp NaN": _with(("value", "calls", 0, "timestamp"), 0).replace(
        b'"timestamp": 0', b'"timestamp": NaN'
    ),
    "timestamp 1e999": _with(("value", "calls", 0, "timestamp"), 0).replace(
        b'"timestamp": 0', b'"timestamp": 1e999'
    ),
    "terminate duration Infinity": _raw(
        json.dumps(
            payloads.envelope(
                [
                    payloads.terminate(
                        call_id="wacid.inf",
                        from_="1",
                        to="2",
                        business="2",
                        phone_number_id=PHONE_NUMBER_ID,
                        direction="USER_INITIATED",
                        start_time=1,
                    )
                ]
            )
        )
    ).replace(b'"duration": ', b'"duration": 1e999, "x": '),
    "number of 5000 digits": b'{"entry": [' + b"9" * 5000 + b"]}",
    "number of 4000 digits as timestamp": _with(("value", "calls", 0, "timestamp"), 0).replace(
        b'"timestamp": 0', b'"timestamp": ' + b"9" * 4000
    ),
    "nested 1000 deep": b'{"entry": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    "nested 100 deep in a call": _with(("value", "calls", 0, "from"), 0).replace(
        b'"from": 0', b'"from": ' + b"[" * 100 + b"]" * 100
    ),
    "lone surrogate call id": _with(("value", "calls", 0, "id"), "wacid.\ud800x"),
    "lone surrogate escaped by hand": _with(("value", "calls", 0, "id"), "X").replace(
        b'"X"', b'"wacid.\\udc80"'
    ),
    "invalid UTF-8": _with(("value", "calls", 0, "id"), "X").replace(b'"X"', b'"wacid.\xff\xfe"'),
    "surrogate bytes in UTF-8": _with(("value", "calls", 0, "id"), "X").replace(
        b'"X"', b'"wacid.\xed\xa0\x80"'
    ),
    "call id of 100 kB": _with(("value", "calls", 0, "id"), "wacid." + "A" * 50_000),
    "call id with a newline": _with(("value", "calls", 0, "id"), "wacid.a\nINFO forged line"),
    "entry is a string": b'{"entry": "abc"}',
    "root is a number": b"12",
    "empty body": b"",
    "null": b"null",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_parser_refuses_or_tolerates_without_raising(name: str) -> None:
    body = HOSTILE[name]
    try:
        parse_payload(decode_json(body))
    except WebhookError as exc:
        assert 400 <= exc.status < 500


def test_paired_surrogates_are_text() -> None:
    # Meta escapes emoji as surrogate pairs: that is valid text, not a lone surrogate.
    body = _with(("value", "contacts", 0, "profile", "name"), "X").replace(
        b'"X"', b'"Ana \\ud83d\\ude00"'
    )
    events, problems = parse_payload(decode_json(body))
    assert problems == [] and events[0].contact is not None  # type: ignore[union-attr]
    assert events[0].contact.name == "Ana \U0001f600"  # type: ignore[union-attr]


def test_lone_surrogate_call_id_is_refused() -> None:
    with pytest.raises(WebhookError) as err:
        decode_json(HOSTILE["lone surrogate call id"])
    assert err.value.status == 400 and "surrogate" in err.value.message


def test_infinite_and_huge_numbers_are_absent_not_fatal() -> None:
    events, problems = parse_payload(decode_json(HOSTILE["number of 4000 digits as timestamp"]))
    assert problems == [] and events[0].timestamp == 0


async def test_every_hostile_signed_delivery_gets_200_or_4xx(stack: Stack) -> None:
    for name, body in HOSTILE.items():
        r = await stack.sandbox.post_raw(body, signature=sign(body, APP_SECRET))
        assert r.status_code == 200 or 400 <= r.status_code < 500, (name, r.status_code)
    await stack.gateway.calls.drain()
    assert stack.gateway.webhooks.internal_errors == 0
    # None of them carried a usable offer: nothing is live, nothing holds a slot.
    await _until(lambda: not stack.gateway.calls.calls)


async def _until(condition: Any) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.02)


# --- size ---------------------------------------------------------------------------


async def _exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send raw HTTP and return the status line, without finishing the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(10):  # a hang here means the body was waited for
            return await reader.readline()
    finally:
        writer.close()


def _head(length: int | None, signature: str | None = None) -> bytes:
    lines = ["POST /webhook HTTP/1.1", "Host: gateway", "Content-Type: application/json"]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    if signature:
        lines.append(f"{SIGNATURE_HEADER}: {signature}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_declared_oversize_is_refused_before_the_body_is_read(stack: Stack) -> None:
    # 20 MB declared, not one byte sent: the answer can only come from the header.
    status = await _exchange(stack.gateway.port, _head(20_000_000))
    assert status.startswith(b"HTTP/1.1 413"), status
    assert stack.gateway.webhooks.too_large == 1


async def test_chunked_oversize_is_refused_at_the_cap(stack: Stack) -> None:
    cap = stack.gateway.webhooks.max_body_bytes
    assert cap == DEFAULT_MAX_BODY_BYTES
    # One byte over the cap, and the chunked body never ends: refused at the cap.
    chunk = b"x" * (cap + 1)
    status = await _exchange(
        stack.gateway.port, _head(None), f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    )
    assert status.startswith(b"HTTP/1.1 413"), status


async def test_a_delivery_at_the_cap_is_read(stack: Stack) -> None:
    body = json.dumps(payloads.envelope([])).encode()
    body += b" " * (stack.gateway.webhooks.max_body_bytes - len(body))
    r = await stack.sandbox.post_raw(body, signature=sign(body, APP_SECRET))
    assert r.status_code == 200


# --- log lines ------------------------------------------------------------------------


def test_clip_truncates_and_escapes() -> None:
    assert clip("wacid.ABC") == "wacid.ABC"
    line = clip("x" * 100_000, 20)
    assert line == "x" * 20 + "…(+99980)"
    assert clip("a\nINFO forged\x1b[31m") == "a\\nINFO forged\\x1b[31m"
    assert clip("id\ud800") == "id\\ud800"
    assert clip("back\\slash") == "back\\\\slash"
    assert clip(b"\xff" * 3) == "\\xff\\xff\\xff"
    nested: Any = []
    for _ in range(5000):
        nested = [nested]
    assert len(clip(nested)) < 200  # no recursion, bounded
    assert clip(10**4000).startswith("1")
    assert len(clip(10**4000)) < 200
    assert clip(ValueError("bad\nvalue")) == "bad\\nvalue"


def test_clip_passes_a_clean_text_through_without_escaping_it() -> None:
    # The usual value (a call id, a reason) costs no per-character pass.
    call_id = "wacid." + "HBgLMTU1NTEyMzAwMDEVAgARGBJBNzQ4Q0M1"
    assert clip(call_id) is call_id
    # Anything _escape would change still goes through it, whichever character it is.
    for char in ("\\", "\n", "\x1b", "\u2028", "\ud800", "\x7f", "\u00a0"):
        assert clip("a" + char) == "a" + (ascii(char)[1:-1] if char != "\\" else "\\\\")


async def test_hostile_values_reach_the_log_clipped(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    body = _with(("value", "calls", 0, "event"), "E" * 50_000)
    r = await stack.sandbox.post_raw(body, signature=sign(body, APP_SECRET))
    assert r.status_code == 200
    body = _with(("value", "calls", 0, "id"), "wacid.a\nforged" + "B" * 50_000)
    r = await stack.sandbox.post_raw(body, signature=sign(body, APP_SECRET))
    assert r.status_code == 400
    assert max(len(rec.getMessage()) for rec in caplog.records) < 1000
    assert not any("\nforged" in rec.getMessage() for rec in caplog.records)
