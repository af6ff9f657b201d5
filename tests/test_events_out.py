"""Events to the business backend: signed POSTs from the outbox, retried until the
receiver is back, each event acknowledged once."""

from __future__ import annotations

import asyncio
import hmac
from collections import Counter
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.calls import CallRecord
from gateway.events import Direction
from gateway.outbox import EventOutbox, sign
from gateway.store import MemoryStore, SQLiteStore

from .backend import SECRET, Receiver, wait_for
from .conftest import answered_call, start_stack, stop_stack


async def test_backend_gets_signed_events_and_ended_after_being_down() -> None:
    receiver = Receiver()
    await receiver.start()
    stack = await start_stack(
        env={"GATEWAY_EVENTS_URL": receiver.url, "GATEWAY_EVENTS_SECRET": SECRET}
    )
    try:
        call = await answered_call(stack)
        await wait_for(lambda: len(receiver.events) == 2)
        assert [e["type"] for e in receiver.events] == ["call.started", "call.answered"]
        assert all(e["call"]["call_id"] == call.call_id for e in receiver.events)

        # The backend goes down; the call ends meanwhile.
        receiver.down = True
        await call.hang_up()
        await wait_for(lambda: receiver.refused >= 2)
        assert receiver.of_type("call.ended") == []
        receiver.down = False
        await wait_for(lambda: len(receiver.of_type("call.ended")) == 1, 30)
        await asyncio.sleep(1.5)  # nothing more arrives: no second copy of any event
        assert await stack.gateway.store.outbox_next_due() is None  # nothing left behind
        registry = stack.gateway.metrics.registry
        delivered = {"type": "call.ended", "outcome": "delivered"}
        assert registry.get_sample_value("gateway_events_total", delivered) == 1
        assert registry.get_sample_value("gateway_event_delivery_attempts_total", {"status": "503"})
    finally:
        await stop_stack(stack)
        await receiver.stop()

    ids = Counter(e["id"] for e in receiver.events)
    assert len(ids) == 3 and set(ids.values()) == {1}, ids
    assert receiver.bad_signatures == 0
    ended = receiver.of_type("call.ended")[0]["call"]
    assert ended["terminate_status"] == "COMPLETED"
    assert ended["end_reason"] == "terminated by WhatsApp (completed)"
    assert ended["state"] == "ENDED" and ended["direction"] == "USER_INITIATED"
    assert "duration" in ended and "start_time" in ended and "errors" in ended
    assert "biz_opaque_callback_data" in ended and ended["transcript"] is None


async def test_outbox_survives_a_restart(tmp_path: Path) -> None:
    record = CallRecord("wacid.R", Direction.USER_INITIATED, "15551230001")
    first = SQLiteStore(tmp_path)
    await first.open()
    # The backend is unreachable while the first process runs (nothing on port 9).
    outbox = EventOutbox(first, url="http://127.0.0.1:9/events", secret=SECRET)
    await outbox.start()
    event = outbox.publish("call.ended", record)
    await outbox.aclose()
    await first.close()

    receiver = Receiver()
    await receiver.start()
    second = SQLiteStore(tmp_path)
    await second.open()
    outbox = EventOutbox(second, url=receiver.url, secret=SECRET)
    try:
        await outbox.start()
        await wait_for(lambda: len(receiver.events) == 1)
    finally:
        await outbox.aclose()
        await second.close()
        await receiver.stop()
    assert receiver.events[0]["id"] == event.id
    assert receiver.events[0]["call"]["call_id"] == "wacid.R"


async def test_undeliverable_events_are_dropped_after_max_age() -> None:
    store = MemoryStore()
    registry = CollectorRegistry()
    # Nothing listens on port 9 (discard): every attempt fails to connect.
    outbox = EventOutbox(
        store, url="http://127.0.0.1:9/events", secret=SECRET, max_age=0.5, registry=registry
    )
    undeliverable = {"type": "call.started", "outcome": "undeliverable"}
    await outbox.start()
    try:
        outbox.publish("call.started", CallRecord("wacid.1", Direction.USER_INITIATED, "1555"))
        await wait_for(lambda: registry.get_sample_value("gateway_events_total", undeliverable))
    finally:
        await outbox.aclose()
    assert registry.get_sample_value("gateway_events_total", undeliverable) == 1
    assert registry.get_sample_value("gateway_event_delivery_attempts_total", {"status": "error"})
    assert await store.outbox_next_due() is None


def test_signature_is_meta_style() -> None:
    body = b'{"type":"call.started"}'
    assert sign(body, SECRET) == "sha256=" + hmac.new(b"events-secret", body, "sha256").hexdigest()


def test_events_url_needs_a_secret() -> None:
    import pytest

    from gateway.config import load_settings
    from gateway.errors import ConfigError

    base = {
        "WHATSAPP_ACCESS_TOKEN": "t",
        "WHATSAPP_APP_SECRET": "s",
        "WHATSAPP_VERIFY_TOKEN": "v",
        "WHATSAPP_PHONE_NUMBER_ID": "1",
        "GATEWAY_EVENTS_URL": "https://crm.example/hooks/calls",
    }
    with pytest.raises(ConfigError, match="GATEWAY_EVENTS_SECRET"):
        load_settings(base)
    with pytest.raises(ConfigError, match="http"):
        load_settings({**base, "GATEWAY_EVENTS_URL": "crm.example", "GATEWAY_EVENTS_SECRET": "k"})
    settings = load_settings({**base, "GATEWAY_EVENTS_SECRET": "s3cr3t-hmac-key"})
    assert settings.events_secret is not None and "s3cr3t" not in repr(settings)
