"""JSON logs: one object per line, with the call id as a field."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from gateway.errors import ConfigError
from gateway.logs import make_handler

from .conftest import Stack, answered_call


async def test_json_lines_parse_and_carry_call_id(stack: Stack) -> None:
    buffer = io.StringIO()
    handler = make_handler("json", buffer)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        call = await answered_call(stack, name='Ana "\n<x>')
        logging.getLogger("gateway.test").info("about a call", extra={"stage": "test", "n": 3})
        await call.hang_up()
        async with asyncio.timeout(10):
            while call.call_id not in stack.gateway.calls.history:
                await asyncio.sleep(0.01)
    finally:
        root.removeHandler(handler)

    lines = buffer.getvalue().splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
        assert entry["time"].endswith("Z")
    ours = [e for e in entries if e.get("call_id") == call.call_id]
    messages = [e["message"] for e in ours if e["logger"] == "gateway.calls"]
    assert any("-> ACTIVE" in m for m in messages)
    assert any("-> ENDED" in m for m in messages)
    extra = next(e for e in entries if e["message"] == "about a call")
    assert extra["stage"] == "test" and extra["n"] == 3 and "call_id" not in extra


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_LOG_FORMAT"):
        make_handler("xml")


def test_text_format_stays_the_default() -> None:
    buffer = io.StringIO()
    handler = make_handler("text", buffer)
    handler.handle(logging.makeLogRecord({"msg": "call %s: hello", "args": ("wacid.1",)}))
    assert buffer.getvalue().rstrip().endswith("call wacid.1: hello")
