"""The IVR bot on real calls: a DTMF path, a spoken-keyword path, and the no-input timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bots.ivr import DEFAULT_MENU, IvrBot, IvrConfig, load_menu, parse_menu
from gateway.errors import BotError
from gateway.media.audio import load_wav
from gateway.pipeline.plugins import default_tts
from gateway.pipeline.session import session_factory
from gateway.sandbox.user import SimulatedUser, UserCall

from .audio_checks import loud_frames
from .conftest import AUDIO, Stack, start_stack, stop_stack

# A menu whose keywords are words spoken in the shared recordings.
CARDS_MENU: dict[str, Any] = {
    "ivr": {"start": "main", "timeout_seconds": 1.5, "max_retries": 1, "goodbye": "Goodbye."},
    "menus": {
        "main": {
            "prompt": "Say go forward to continue.",
            "options": [
                {"keywords": ["forward"], "goto": "suits"},
                {"dtmf": "#", "action": "hangup"},
            ],
        },
        "suits": {
            "prompt": "Name a suit.",
            "options": [{"keywords": ["clubs"], "action": "hangup"}],
        },
    },
}


async def _ivr_call(config: IvrConfig) -> tuple[Stack, UserCall, list[IvrBot]]:
    bots: list[IvrBot] = []

    def make() -> IvrBot:
        bots.append(IvrBot(config))
        return bots[-1]

    stack = await start_stack(session=session_factory(make, default_tts()))
    call = await SimulatedUser(stack.sandbox, "15552220001", "Ivy").place_call()
    async with asyncio.timeout(15):
        await call.accepted.wait()
        await call.media_up.wait()
    return stack, call, bots


async def _until_heard(call: UserCall) -> None:
    async with asyncio.timeout(10):
        while call.first_heard_at is None:
            await asyncio.sleep(0.02)


async def test_dtmf_path_through_the_default_menu() -> None:
    stack, call, bots = await _ivr_call(load_menu(DEFAULT_MENU))
    try:
        await _until_heard(call)  # the welcome prompt
        await call.press("1")  # opening hours (cuts the prompt short)
        await asyncio.sleep(1.0)
        await call.press("#")  # end the call
        async with asyncio.timeout(15):
            await call.ended.wait()
        assert bots[0].path == ["main:key 1", "hours:key #"]
        assert [a.action for a in stack.sandbox.actions(call.call_id)][-1] == "terminate"
        record = stack.gateway.calls.history[call.call_id]
        assert record.end_reason == "IVR: caller chose to end the call (key #)"
        assert loud_frames(call.heard) > 50  # prompts and the goodbye were heard
    finally:
        await stop_stack(stack)


async def test_spoken_keyword_path() -> None:
    stack, call, bots = await _ivr_call(parse_menu(CARDS_MENU))
    try:
        await _until_heard(call)
        await call.play(load_wav(AUDIO / "goforward.wav")).wait()
        async with asyncio.timeout(10):
            while bots[0].menu.name != "suits":
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # "Name a suit."
        await call.play(load_wav(AUDIO / "cards-001.wav")).wait()  # "ten of clubs"
        async with asyncio.timeout(15):
            await call.ended.wait()
        assert bots[0].path == ["main:said 'forward'", "suits:said 'clubs'"]
        assert [a.action for a in stack.sandbox.actions(call.call_id)][-1] == "terminate"
    finally:
        await stop_stack(stack)


async def test_no_input_reprompts_then_hangs_up() -> None:
    stack, call, bots = await _ivr_call(parse_menu(CARDS_MENU))
    try:
        async with asyncio.timeout(20):
            await call.ended.wait()
        record = stack.gateway.calls.history[call.call_id]
        assert record.end_reason == "IVR: no input after 1 retries"
        assert bots[0].retries == 2 and bots[0].path == []
    finally:
        await stop_stack(stack)


async def test_unrecognized_words_count_as_a_retry() -> None:
    stack, call, bots = await _ivr_call(parse_menu(CARDS_MENU))
    try:
        await _until_heard(call)
        await call.play(load_wav(AUDIO / "forever-2.wav")).wait()  # no keyword in it
        async with asyncio.timeout(10):
            while bots[0].retries == 0:
                await asyncio.sleep(0.05)
        assert bots[0].menu.name == "main" and bots[0].path == []
        await call.hang_up()
    finally:
        await stop_stack(stack)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["menus"]["main"].pop("prompt"), "needs a prompt"),
        (lambda m: m["menus"]["main"]["options"][0].update(goto="nowhere"), "unknown menu"),
        (lambda m: m["menus"]["main"]["options"][0].update(say="x"), "one of goto, say, action"),
        (lambda m: m["ivr"].update(start="lobby"), "start menu"),
        (lambda m: m["menus"]["suits"]["options"][0].update(action="dance"), "unknown action"),
    ],
)
def test_bad_menus_are_refused_clearly(change: Any, message: str) -> None:
    import copy

    menu = copy.deepcopy(CARDS_MENU)
    change(menu)
    with pytest.raises(BotError, match=message):
        parse_menu(menu)


def test_default_menu_loads() -> None:
    config = load_menu(DEFAULT_MENU)
    assert config.start == "main" and {"hours", "agent", "goodbye", "back"} <= set(config.keywords)
