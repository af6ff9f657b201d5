"""Restarts lose nothing: real ``gateway serve`` processes, killed (SIGKILL) or stopped
(SIGTERM) mid-call and started again on the same data dir, against the Cloud API sandbox.

The figures (seconds from restart to ``terminate``, records lost) are printed; run
``.venv/bin/pytest -s -m slow tests/test_restart.py`` for the README table.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.calls import RESTART_END_REASON
from gateway.events import CallConnect, Direction
from gateway.loadtest.target import GatewayUnderTest, start_local_gateway
from gateway.outbox import event_id, make_event
from gateway.records import CallRecord, CallState
from gateway.sandbox import payloads
from gateway.sandbox.cloud import CloudAPISandbox
from gateway.sandbox.stack import start_local_stack
from gateway.sandbox.user import SimulatedUser, UserCall
from gateway.store import SQLiteStore
from gateway.webhooks import parse_payload

from .backend import SECRET, Receiver, wait_for
from .conftest import ACCESS_TOKEN, API_KEY, APP_SECRET, PHONE_NUMBER_ID, VERIFY_TOKEN


class Deployment:
    """The sandbox (Meta and the users) and one gateway process at a time on one data dir."""

    def __init__(self, data_dir: Path, events_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.events_url = events_url
        self.sandbox = CloudAPISandbox(
            webhook_url="",
            app_secret=APP_SECRET,
            access_token=ACCESS_TOKEN,
            phone_number_id=PHONE_NUMBER_ID,
        )
        # Meta retries deliveries a restarting gateway could not take.
        self.sandbox.redelivery_seconds = 30.0
        self.gateway: GatewayUnderTest | None = None
        self.api = httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)

    async def start_gateway(self) -> GatewayUnderTest:
        """Start ``gateway serve`` on the data dir and point the sandbox's webhooks at it."""
        self.gateway = await start_local_gateway(
            self.sandbox.graph_url,
            bot="echo",
            max_calls=10,
            extra_env={
                "WHATSAPP_APP_SECRET": APP_SECRET,
                "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
                "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
                "GATEWAY_API_KEY": API_KEY,
                "GATEWAY_DATA_DIR": str(self.data_dir),
                # A drain on SIGTERM (if any) should not hold the tests up.
                "GATEWAY_DRAIN_TIMEOUT": "1",
                **(
                    {"GATEWAY_EVENTS_URL": self.events_url, "GATEWAY_EVENTS_SECRET": SECRET}
                    if self.events_url
                    else {}
                ),
            },
        )
        self.sandbox.webhook_url = f"{self.gateway.url}/webhook"
        return self.gateway

    async def call(self, call_id: str) -> dict[str, Any]:
        assert self.gateway is not None
        response = await self.api.get(f"{self.gateway.url}/calls/{call_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def until_call(self, call_id: str, key: str, value: Any, seconds: float = 15) -> None:
        """Poll the HTTP API until the call's record has ``key == value``."""
        async with asyncio.timeout(seconds):
            while True:
                assert self.gateway is not None
                r = await self.api.get(f"{self.gateway.url}/calls/{call_id}")
                if r.status_code == 200 and r.json().get(key) == value:
                    return
                await asyncio.sleep(0.05)

    async def last_reply(self, wa_id: str) -> Any:
        assert self.gateway is not None
        r = await self.api.get(f"{self.gateway.url}/permissions/{wa_id}")
        assert r.status_code == 200, r.text
        return r.json()["last_reply"]

    async def kill(self) -> None:
        assert self.gateway is not None and self.gateway.process is not None
        self.gateway.process.kill()
        await self.gateway.process.wait()

    async def aclose(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        await self.sandbox.aclose()
        await self.api.aclose()


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    d = Deployment(tmp_path / "data")
    await d.sandbox.start()
    try:
        yield d
    finally:
        await d.aclose()


async def _live_call(d: Deployment, user: SimulatedUser) -> UserCall:
    call = await user.place_call(inbound=False)
    async with asyncio.timeout(15):
        await call.accepted.wait()
        await call.media_up.wait()
    await d.until_call(call.call_id, "state", "ACTIVE")
    return call


async def _permission_reply(d: Deployment, wa_id: str) -> None:
    await d.sandbox.deliver(
        payloads.permission_reply(
            user=wa_id,
            user_name="Cleo",
            business=d.sandbox.business_number,
            phone_number_id=PHONE_NUMBER_ID,
            context_id="wamid.req1",
            accept=True,
            permanent=True,
        )
    )
    async with asyncio.timeout(10):
        while await d.last_reply(wa_id) is None:
            await asyncio.sleep(0.05)


def _terminates(d: Deployment, call_id: str) -> int:
    return sum(1 for a in d.sandbox.actions(call_id) if a.action == "terminate")


async def _until_terminated(d: Deployment, call_ids: list[str], seconds: float = 30) -> None:
    async with asyncio.timeout(seconds):
        while not all(_terminates(d, c) for c in call_ids):
            await asyncio.sleep(0.02)


async def test_sigkill_mid_call_then_restart_ends_the_call_and_keeps_history(
    deployment: Deployment,
) -> None:
    d = deployment
    await d.start_gateway()
    # History: one finished call. Permissions: one user's reply.
    done = await _live_call(d, SimulatedUser(d.sandbox, "15551230001", "Ana"))
    await done.hang_up()
    await d.until_call(done.call_id, "terminate_status", "COMPLETED")
    await _permission_reply(d, "15551230003")
    live = await _live_call(d, SimulatedUser(d.sandbox, "15551230002", "Ben"))

    await d.kill()
    restarted = time.monotonic()
    await d.start_gateway()
    await _until_terminated(d, [live.call_id])
    seconds = time.monotonic() - restarted

    # The dead process's call ended through the Cloud API, once, with the reason kept...
    assert _terminates(d, live.call_id) == 1
    record = await d.call(live.call_id)
    assert record["state"] == "ENDED" and record["end_reason"] == RESTART_END_REASON
    # ...and WhatsApp's terminate webhook, arriving after, completes the record.
    await d.until_call(live.call_id, "terminate_status", "COMPLETED")
    record = await d.call(live.call_id)
    assert record["end_reason"] == RESTART_END_REASON and record["duration"] is not None
    # History and permissions survived.
    assert (await d.call(done.call_id))["terminate_status"] == "COMPLETED"
    assert (await d.last_reply("15551230003"))["accepted"] is True
    assert d.gateway is not None
    listed = (await d.api.get(f"{d.gateway.url}/calls")).json()
    assert {r["call_id"] for r in listed["recent"]} == {done.call_id, live.call_id}
    assert listed["active"] == []
    print(f"\nSIGKILL mid-call: terminate {seconds:.2f} s after restart, records lost 0")


async def test_sigkill_mid_call_then_restart_sends_the_backend_one_call_ended(
    tmp_path: Path,
) -> None:
    """The backend hears the end of a call the dead process left live, and what that
    process could not deliver (its outbox rows), from the process that follows it."""
    backend = Receiver()
    await backend.start()
    d = Deployment(tmp_path / "data", events_url=backend.url)
    await d.sandbox.start()
    try:
        await d.start_gateway()
        backend.down = True  # call.started and call.answered stay in the dead process's outbox
        live = await _live_call(d, SimulatedUser(d.sandbox, "15551230002", "Ben"))
        await wait_for(
            lambda: {e["type"] for e in backend.refused_events} == {"call.started", "call.answered"}
        )
        await d.kill()
        backend.down = False
        await d.start_gateway()
        await wait_for(lambda: len(backend.of_type("call.ended", live.call_id)) == 1, 30)
        assert d.gateway is not None
        await d.gateway.stop()  # everything queued is written to the store first
    finally:
        await d.aclose()
        await backend.stop()

    # One of each event of the call, under the ids its owner gave (or would have given).
    kinds = ("call.started", "call.answered", "call.ended")
    assert sorted(e["type"] for e in backend.events) == sorted(kinds)
    assert {e["type"]: e["id"] for e in backend.events} == {
        k: event_id(k, live.call_id) for k in kinds
    }
    assert backend.bad_signatures == 0  # the receiver takes only bodies signed with SECRET
    ended = backend.of_type("call.ended")[0]["call"]
    assert ended["call_id"] == live.call_id and ended["state"] == "ENDED"
    assert ended["end_reason"] == RESTART_END_REASON
    # WhatsApp's terminate record (its answer to the restart's terminate) is on it.
    assert ended["terminate_status"] == "COMPLETED"
    # Nothing else waits to be sent (no second copy of the call.ended held back).
    store = SQLiteStore(d.data_dir)
    await store.open()
    try:
        assert await store.outbox_next_due() is None
    finally:
        await store.close()


async def test_a_held_call_ended_of_the_dead_process_and_the_restarts_are_one_event(
    tmp_path: Path,
) -> None:
    """The dead process ended its calls and stored their call.ended held (waiting for
    WhatsApp's terminate record), then died before their records said ENDED. The next
    process ends them at start-up: the backend gets one call.ended per call, under the
    same id, the restart's (its end is the one the gateway's record keeps).

    Two calls, their held events already due (the restart took longer than twice the
    wait): the restart's versions must replace them before anything is delivered."""
    data_dir = tmp_path / "data"
    call_ids = ["wacid.HELD1", "wacid.HELD2"]
    store = SQLiteStore(data_dir)
    await store.open()
    long_ago = time.time() - 600
    for call_id in call_ids:
        record = CallRecord(call_id, Direction.USER_INITIATED, "15551230006", created_at=long_ago)
        record.state, record.accepted_at = CallState.ACTIVE, long_ago + 1
        await store.save_call(record)  # the last write that reached the disk
        record.state, record.end_reason, record.ended_at = (
            CallState.ENDED,
            "the bot hung up",
            long_ago + 30,
        )
        held = make_event("call.ended", record, now=long_ago + 30)
        await store.outbox_add(held)  # held: due after twice the wait, long past
    await store.close()

    backend = Receiver()
    await backend.start()
    sandbox = CloudAPISandbox(
        webhook_url="",
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
    )
    stack = await start_local_stack(
        sandbox,
        data_dir=str(data_dir),
        env={"GATEWAY_EVENTS_URL": backend.url, "GATEWAY_EVENTS_SECRET": SECRET},
    )
    try:
        for call_id in call_ids:  # WhatsApp's terminate records of the calls
            await sandbox.deliver(
                payloads.terminate(
                    call_id=call_id,
                    from_="15551230006",
                    to=sandbox.business_number,
                    business=sandbox.business_number,
                    phone_number_id=PHONE_NUMBER_ID,
                    direction="USER_INITIATED",
                    start_time=int(long_ago),
                    end_time=int(long_ago) + 30,
                )
            )
        await wait_for(lambda: len(backend.of_type("call.ended")) >= len(call_ids))
    finally:
        await stack.aclose()
        await backend.stop()

    for call_id in call_ids:
        (event,) = backend.of_type("call.ended", call_id)
        assert event["id"] == event_id("call.ended", call_id)
        assert event["call"]["end_reason"] == RESTART_END_REASON
        assert event["call"]["terminate_status"] == "COMPLETED"
    assert backend.bad_signatures == 0
    store = SQLiteStore(data_dir)
    await store.open()
    try:
        assert await store.outbox_next_due() is None  # the held versions are gone
        kept = await store.get_call(call_ids[0])
        assert kept is not None and kept.end_reason == RESTART_END_REASON
    finally:
        await store.close()


async def test_sigterm_mid_call_ends_calls_keeps_records_and_exits_0(
    deployment: Deployment,
) -> None:
    d = deployment
    gateway = await d.start_gateway()
    live = await _live_call(d, SimulatedUser(d.sandbox, "15551230002", "Ben"))
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        code = await gateway.process.wait()
    assert code == 0
    assert _terminates(d, live.call_id) == 1

    # The record is on disk, ended, before any restart.
    store = SQLiteStore(d.data_dir)
    await store.open()
    try:
        record = await store.get_call(live.call_id)
        assert await store.live_calls() == []
    finally:
        await store.close()
    assert record is not None and record.state is CallState.ENDED and record.end_reason
    # Meta's terminate webhook found the gateway gone; its retry reaches the next process.
    await d.start_gateway()
    assert _terminates(d, live.call_id) == 1  # nothing left to end at start-up
    await d.sandbox.deliver(
        payloads.terminate(
            call_id=live.call_id,
            from_="15551230002",
            to=d.sandbox.business_number,
            business=d.sandbox.business_number,
            phone_number_id=PHONE_NUMBER_ID,
            direction="USER_INITIATED",
            start_time=int(time.time()) - 3,
        )
    )
    await d.until_call(live.call_id, "terminate_status", "COMPLETED")
    assert (await d.call(live.call_id))["end_reason"] == record.end_reason


async def test_an_event_journaled_but_not_handled_is_handled_after_restart(
    tmp_path: Path,
) -> None:
    """The crash window between the journal write (before the 200) and the handling.

    A user's connect is journaled exactly as the receiver does, by a "process" that
    then dies; the next gateway on that data dir answers the call.
    """
    sandbox = CloudAPISandbox(
        webhook_url="",
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
    )
    data_dir = tmp_path / "data"
    journaled: list[CallConnect] = []

    async def journal_instead(*changes: dict[str, Any], signed: bool = True) -> httpx.Response:
        events, problems = parse_payload(json.loads(json.dumps(payloads.envelope(list(changes)))))
        assert not problems
        store = SQLiteStore(data_dir)
        await store.open()
        entries = await store.journal(events)
        await store.close()  # ...and the process dies before handling it
        journaled.extend(e.event for e in entries if isinstance(e.event, CallConnect))
        return httpx.Response(200)

    sandbox.deliver = journal_instead  # type: ignore[method-assign]
    call = await SimulatedUser(sandbox, "15551230004", "Dan").place_call(inbound=False)
    assert [e.call_id for e in journaled] == [call.call_id]
    del sandbox.deliver  # deliveries go over HTTP again

    stack = await start_local_stack(sandbox, data_dir=str(data_dir))
    try:
        async with asyncio.timeout(15):
            await call.accepted.wait()
        assert [a.action for a in sandbox.actions(call.call_id)] == ["pre_accept", "accept"]
        await stack.gateway.calls.drain()
        assert await stack.gateway.store.unhandled() == []
        await call.hang_up()
        async with asyncio.timeout(10):
            while call.call_id not in stack.gateway.calls.history:
                await asyncio.sleep(0.02)
    finally:
        await stack.aclose()


# --- the fault-suite rows (make faults) ------------------------------------------------

LIVE_CALLS = 5
FINISHED_CALLS = 3


async def _busy_gateway(d: Deployment) -> tuple[list[UserCall], list[UserCall]]:
    """Some finished calls (history), then LIVE_CALLS calls up at the same time."""
    finished = []
    for i in range(FINISHED_CALLS):
        call = await _live_call(d, SimulatedUser(d.sandbox, f"1555100000{i}", f"Done {i}"))
        await call.hang_up()
        await d.until_call(call.call_id, "terminate_status", "COMPLETED")
        finished.append(call)
    live = await asyncio.gather(
        *(
            _live_call(d, SimulatedUser(d.sandbox, f"1555200000{i}", f"Live {i}"))
            for i in range(LIVE_CALLS)
        )
    )
    return finished, list(live)


async def _records_lost(d: Deployment, calls: list[UserCall]) -> int:
    assert d.gateway is not None
    lost = 0
    for call in calls:
        r = await d.api.get(f"{d.gateway.url}/calls/{call.call_id}")
        lost += r.status_code != 200
    return lost


@pytest.mark.slow
async def test_fault_row_sigkill_with_live_calls(deployment: Deployment) -> None:
    d = deployment
    await d.start_gateway()
    finished, live = await _busy_gateway(d)
    await _permission_reply(d, "15551230003")

    await d.kill()
    restarted = time.monotonic()
    await d.start_gateway()
    up = time.monotonic() - restarted
    await _until_terminated(d, [c.call_id for c in live])
    seconds = time.monotonic() - restarted
    for call in live:
        await d.until_call(call.call_id, "terminate_status", "COMPLETED")

    ids = [c.call_id for c in live]
    assert all(_terminates(d, c) == 1 for c in ids)
    records = [await d.call(c) for c in ids]
    assert all(r["state"] == "ENDED" and r["end_reason"] == RESTART_END_REASON for r in records)
    lost = await _records_lost(d, [*finished, *live])
    assert lost == 0
    assert (await d.last_reply("15551230003"))["accepted"] is True
    stuck = len([c for c in live if not c.ended.is_set()])
    assert stuck == 0
    print(
        f"\nFAULT ROW | SIGKILL mid-call, restart | {LIVE_CALLS} live calls: terminate for all "
        f"{seconds:.2f} s after the restart began (gateway up after {up:.2f} s) | "
        f"records lost {lost}/{LIVE_CALLS + FINISHED_CALLS} | calls stuck {stuck} | "
        f"terminate records completed {LIVE_CALLS}/{LIVE_CALLS}"
    )


@pytest.mark.slow
async def test_fault_row_sigterm_with_live_calls(deployment: Deployment) -> None:
    d = deployment
    gateway = await d.start_gateway()
    finished, live = await _busy_gateway(d)
    assert gateway.process is not None

    stopping = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        code = await gateway.process.wait()
    seconds = time.monotonic() - stopping
    assert code == 0
    ids = [c.call_id for c in live]
    assert all(_terminates(d, c) == 1 for c in ids)

    await d.start_gateway()
    assert all(_terminates(d, c) == 1 for c in ids)  # nothing was left live
    for call in live:
        # Meta's terminate webhooks are retried until a gateway takes them.
        await d.until_call(call.call_id, "terminate_status", "COMPLETED")
    lost = await _records_lost(d, [*finished, *live])
    assert lost == 0
    stuck = len([c for c in live if not c.ended.is_set()])
    assert stuck == 0
    print(
        f"\nFAULT ROW | SIGTERM mid-call | {LIVE_CALLS} live calls: all ended with terminate, "
        f"exit code {code} after {seconds:.2f} s | records lost {lost}/"
        f"{LIVE_CALLS + FINISHED_CALLS} | calls stuck {stuck}"
    )


async def test_a_delivery_the_store_cannot_take_gets_503_and_its_retry_is_taken(
    tmp_path: Path,
) -> None:
    stack = await start_local_stack(
        CloudAPISandbox(
            webhook_url="",
            app_secret=APP_SECRET,
            access_token=ACCESS_TOKEN,
            phone_number_id=PHONE_NUMBER_ID,
        ),
        data_dir=str(tmp_path / "data"),
    )
    change = payloads.permission_reply(
        user="15551230005",
        user_name="Eve",
        business=stack.sandbox.business_number,
        phone_number_id=PHONE_NUMBER_ID,
        context_id="wamid.req5",
        accept=True,
    )
    try:
        await stack.gateway.store.close()  # e.g. the disk is gone
        response = await stack.sandbox.deliver(change)
        assert response.status_code == 503  # not taken: Meta retries it
        await stack.gateway.store.open()
        response = await stack.sandbox.deliver(change)  # the retry
        assert response.status_code == 200 and response.json() == {"received": 1}
        await stack.gateway.calls.drain()
        kept = await stack.gateway.store.permission_reply("15551230005")
        assert kept is not None and kept.accepted
    finally:
        await stack.aclose()


async def test_start_up_prunes_what_is_older_than_the_retention(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = SQLiteStore(data_dir)
    await store.open()
    day = 86400.0
    for call_id, age_days in (("wacid.old", 40), ("wacid.recent", 2)):
        record = CallRecord(
            call_id, Direction.USER_INITIATED, "1555", created_at=time.time() - age_days * day
        )
        record.state, record.ended_at = CallState.ENDED, record.created_at + 60
        await store.save_call(record)
    await store.close()

    stack = await start_local_stack(data_dir=str(data_dir))  # default retention: 30 days
    try:
        assert await stack.gateway.store.get_call("wacid.old") is None
        assert await stack.gateway.store.get_call("wacid.recent") is not None
    finally:
        await stack.aclose()
