"""``gateway call``: a small client of the gateway's HTTP API."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import httpx

from .errors import ConfigError

POLL_SECONDS = 0.5
TERMINATE_WAIT = 5.0


def _describe_error(body: Any) -> str:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    parts = [str(error.get("message", body))]
    if error.get("code") is not None:
        parts.append(f"(code {error['code']})")
    if error.get("details"):
        parts.append(f"— {error['details']}")
    text = " ".join(parts)
    if error.get("hint"):
        text += f"\n  hint: {error['hint']}"
    return text


async def place_call(args: argparse.Namespace) -> int:
    """Place the call; with ``--wait`` follow it to the end. Returns an exit code."""
    url = (args.url or os.environ.get("GATEWAY_URL") or "http://127.0.0.1:8080").rstrip("/")
    key = args.api_key or os.environ.get("GATEWAY_API_KEY")
    if not key:
        raise ConfigError("missing API key: set GATEWAY_API_KEY or pass --api-key")
    body: dict[str, Any] = {"to": args.wa_id}
    if args.bot:
        body["bot"] = args.bot
    if args.callback_data is not None:
        body["biz_opaque_callback_data"] = args.callback_data
    if args.ring_timeout:
        body["ring_timeout"] = args.ring_timeout
    if args.request_permission:
        body["request_permission"] = True
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        try:
            response = await client.post("/calls", json=body)
        except httpx.TransportError as exc:
            print(f"gateway: cannot reach {url}: {exc!r}")
            return 1
        data = response.json()
        if response.status_code == 202:
            print(f"no call permission from {args.wa_id}: {_describe_error(data)}")
            print(f"sent a call permission request (message {data.get('message_id')})")
            return 3
        if response.status_code != 201:
            print(f"call to {args.wa_id} failed: {_describe_error(data)}")
            return 1
        call_id = data["call_id"]
        print(f"calling {args.wa_id}: call {call_id} {data['state']}")
        if not args.wait:
            return 0
        state = data["state"]
        while state != "ENDED":
            await asyncio.sleep(POLL_SECONDS)
            response = await client.get(f"/calls/{call_id}")
            data = response.json()
            if data.get("state") != state:
                state = data["state"]
                print(f"  {state}")
        # Meta's terminate webhook (the billing record) may land just after we hang up.
        for _ in range(int(TERMINATE_WAIT / POLL_SECONDS)):
            if data.get("terminate_status"):
                break
            await asyncio.sleep(POLL_SECONDS)
            data = (await client.get(f"/calls/{call_id}")).json()
        print(f"call ended: {data.get('end_reason')}")
        for key_name in ("terminate_status", "duration", "biz_opaque_callback_data"):
            if data.get(key_name) is not None:
                print(f"  {key_name}: {data[key_name]}")
        for error in data.get("errors") or []:
            print(f"  error {error.get('code')}: {error.get('message')}")
        return 0 if data.get("accepted_at") else 4
