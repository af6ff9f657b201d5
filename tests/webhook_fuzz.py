"""Webhook fuzzing with hypothesis over the real receiver (a gateway on loopback).

Deliveries are drawn from the contract's payload shapes (shared/whatsapp-calling.md,
section 3: connect, terminate, statuses, permission replies) with any part replaced
by junk of any JSON type, non-standard JSON (NaN, Infinity, huge numbers), lone
surrogates, and raw bytes; all signed with the app secret, as Meta signs them.
The gateway runs on its own event loop in a thread, so hypothesis drives it with
plain blocking HTTP requests.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import rtc
from gateway.webhooks import SIGNATURE_HEADER, sign

from .conftest import APP_SECRET, PHONE_NUMBER_ID, Stack, start_stack, stop_stack

T = TypeVar("T")

_SURROGATE = st.sampled_from(["\ud800", "wacid.\udc80x", "a\udfffb"])
_JUNK_TEXT = st.sampled_from(["", " ", "\n", "x" * 300, "Infinity", "wacid.a b"])
# Valid Unicode text (hypothesis' default alphabet has lone surrogates too often).
_PLAIN = st.text(st.characters(codec="utf-8"), max_size=12)
# Lone surrogates only where they hurt most (call ids): anywhere, they would
# make most bodies fail the receiver's first check and hide everything behind it.
_TEXT = st.one_of(*[_PLAIN] * 8, _JUNK_TEXT)
_NUMBER = (
    st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([10**30, -(10**30), 2**63, 2**64])
)
JSON = st.recursive(
    st.none() | st.booleans() | _NUMBER | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=12,
)


def _or_junk(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Mostly the right shape (6 in 7), sometimes anything at all. Not one_of() with
    # the strategy six times: a strategy's repr holds its parts', so six copies a
    # level made the delivery strategy's repr grow 6x per level of nesting, and
    # hypothesis builds that repr whenever the global `random` state changes during
    # a draw (the gateway's thread uses it): a 24 GB string, the OOM of make faults.
    return st.integers(0, 6).flatmap(lambda i: JSON if i == 6 else strategy)


def _maybe(d: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    # Half the time the whole shape, right; else any subset of the keys, each
    # valued right or wrong (so deep parts are reached as often as broken ones).
    return st.one_of(
        st.fixed_dictionaries(d),
        st.fixed_dictionaries({}, optional={k: _or_junk(v) for k, v in d.items()}),
    )


def deliveries(offer: str) -> st.SearchStrategy[bytes]:
    """Signed-to-be delivery bodies: contract shapes with junk anywhere, or raw bytes."""
    call_id = st.one_of(
        *[st.from_regex(r"\Awacid\.[A-Za-z0-9_-]{4,12}\Z")] * 6,
        st.sampled_from(["wacid.fuzz1", "wacid.fuzz2"]),
        _TEXT,
        _SURROGATE,
    )
    number = st.sampled_from(["15551230001", "15550783881"])
    timestamp = st.one_of(*[st.integers(0, 2**31).map(str)] * 6, _NUMBER)
    session = _maybe(
        {
            "sdp_type": st.sampled_from(["offer", "answer"]),
            "sdp": st.sampled_from([offer, offer, "v=0\r\n", ""]),
        }
    )
    call = _maybe(
        {
            "id": call_id,
            "from": number,
            "to": number,
            "event": st.sampled_from(["connect", "terminate", "ringing"]),
            "timestamp": timestamp,
            "direction": st.sampled_from(["USER_INITIATED", "BUSINESS_INITIATED"]),
            "session": session,
            "status": st.sampled_from(["COMPLETED", "FAILED", "completed"]),
            "start_time": timestamp,
            "end_time": timestamp,
            "duration": st.integers(0, 10**6) | _NUMBER,
            "biz_opaque_callback_data": _TEXT,
            "errors": st.lists(_maybe({"code": _NUMBER, "title": _TEXT, "message": _TEXT})),
        }
    )
    status = _maybe(
        {
            "id": call_id,
            "type": st.just("call"),
            "status": st.sampled_from(["RINGING", "ACCEPTED", "REJECTED"]),
            "timestamp": timestamp,
            "recipient_id": number,
        }
    )
    reply = _maybe(
        {
            "from": number,
            "timestamp": timestamp,
            "context": _maybe({"id": _TEXT}),
            "interactive": _maybe(
                {
                    "type": st.just("call_permission_reply"),
                    "call_permission_reply": _maybe(
                        {
                            "response": st.sampled_from(["accept", "reject"]),
                            "is_permanent": st.booleans(),
                            "expiration_timestamp": _NUMBER,
                        }
                    ),
                }
            ),
        }
    )
    value = _maybe(
        {
            "messaging_product": st.just("whatsapp"),
            "metadata": _maybe({"phone_number_id": st.just(PHONE_NUMBER_ID)}),
            "contacts": st.lists(_maybe({"wa_id": number, "profile": _maybe({"name": _TEXT})})),
            "calls": st.lists(call, max_size=3),
            "statuses": st.lists(status, max_size=2),
            "messages": st.lists(reply, max_size=2),
        }
    )
    change = _maybe({"field": st.sampled_from(["calls", "messages", "other"]), "value": value})
    envelope = _maybe(
        {
            "object": st.just("whatsapp_business_account"),
            "entry": st.lists(_maybe({"id": _TEXT, "changes": st.lists(change, max_size=3)})),
        }
    )
    as_json = _or_junk(envelope).map(lambda body: json.dumps(body, allow_nan=True).encode())
    return st.one_of(as_json, as_json, as_json, st.binary(max_size=400))


class ThreadedStack:
    """A gateway and its sandbox on an event loop of their own, in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedStack:
        self.thread.start()
        self.stack: Stack = self.run(start_stack(max_calls=20))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(stop_stack(self.stack))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the stack's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def _offer() -> str:
    from gateway.sandbox.user_sdp import whatsapp_offer

    pc = rtc.new_peer_connection()
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    await pc.close()
    return str(whatsapp_offer(pc.localDescription.sdp))


async def _settled(stack: Stack) -> int:
    """Wait (up to 30 s) for every call the fuzz started to end; the number left."""
    await stack.gateway.calls.drain()
    deadline = time.monotonic() + 30
    while stack.gateway.calls.calls and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return len(stack.gateway.calls.calls)


def fuzz(cases: int) -> dict[str, Any]:
    """Post ``cases`` fuzzed, signed deliveries; returns the figures."""
    statuses: Counter[int] = Counter()
    with ThreadedStack() as ts, httpx.Client(timeout=30) as http:
        url = f"{ts.stack.gateway.url}/webhook"
        offer = ts.run(_offer())

        @settings(
            max_examples=cases,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(body=deliveries(offer))
        def post(body: bytes) -> None:
            r = http.post(
                url,
                content=body,
                headers={
                    SIGNATURE_HEADER: sign(body, APP_SECRET),
                    "Content-Type": "application/json",
                },
            )
            statuses[r.status_code] += 1
            assert r.status_code < 500, (r.status_code, body[:300])

        post()
        stuck = ts.run(_settled(ts.stack), timeout=60)
        webhooks = ts.stack.gateway.webhooks
        started = len(ts.stack.gateway.calls.history)
        internal = webhooks.internal_errors
    return {
        "cases": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
        "stuck": stuck,
        "internal_errors": internal,
        "calls_started": started,
    }
