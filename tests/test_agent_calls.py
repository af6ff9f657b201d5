"""The ``agent`` bot on real sandbox calls: recordings in, Whisper, sandbox LLM, speech out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Literal

import httpx
import pytest

from gateway.agent.bot import AgentBot
from gateway.agent.config import AgentConfig, AgentServices
from gateway.agent.llm import LLMClient, LLMSettings
from gateway.agent.tools import tool
from gateway.calls import CallState
from gateway.media.audio import load_wav
from gateway.pipeline.plugins import default_tts
from gateway.pipeline.session import session_factory
from gateway.sandbox.llm import LONG_ANSWER, Rule, ScriptedLLM
from gateway.sandbox.user import SimulatedUser, UserCall
from gateway.stt import load_transcriber

from .audio_checks import loud_frames
from .conftest import API_KEY, AUDIO, Stack, start_stack, stop_stack

THREE_SENTENCES = "You want to go forward. That is fine with me. Please mind the wall."


class Agent:
    """A gateway running the agent bot against a scripted model."""

    def __init__(self, stack: Stack, llm: ScriptedLLM, services: AgentServices) -> None:
        self.stack, self.llm, self.services = stack, llm, services
        self.bots: list[AgentBot] = []

    async def call(self, wa_id: str = "15551110001") -> UserCall:
        call = await SimulatedUser(self.stack.sandbox, wa_id, "Ana").place_call()
        async with asyncio.timeout(15):
            await call.accepted.wait()
            await call.media_up.wait()
        await asyncio.sleep(0.2)
        return call

    async def say(self, call: UserCall, name: str) -> None:
        await call.play(load_wav(AUDIO / name)).wait()

    async def requests(self, n: int) -> None:
        async with asyncio.timeout(20):
            while len(self.llm.requests) < n:
                await asyncio.sleep(0.05)


async def _agent(
    llm: ScriptedLLM, bot: type[AgentBot] = AgentBot, *, llm_wait: float = 5.0, **config: object
) -> Agent:
    await llm.start()
    settings = LLMSettings(llm.url, llm.model, first_token_timeout=llm_wait, stall_timeout=llm_wait)
    services = AgentServices(
        AgentConfig(settings, **config),  # type: ignore[arg-type]
        LLMClient(settings),
        load_transcriber("whisper", {}),
        default_tts(),
    )
    agent: Agent

    def make() -> AgentBot:
        b = bot(services)
        agent.bots.append(b)
        return b

    stack = await start_stack(session=session_factory(make, default_tts()), api_key=API_KEY)
    agent = Agent(stack, llm, services)
    return agent


async def _close(agent: Agent) -> None:
    await stop_stack(agent.stack)
    await agent.services.aclose()
    await agent.llm.aclose()


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    rules = (Rule("forward", reply=THREE_SENTENCES), Rule("forever", tool="end_call"))
    a = await _agent(ScriptedLLM(tokens_per_s=10, rules=rules))
    try:
        yield a
    finally:
        await _close(a)


async def test_agent_hears_the_caller_and_answers_before_the_stream_ends(agent: Agent) -> None:
    call = await agent.call()
    await agent.say(call, "goforward.wav")
    await agent.requests(1)
    said = agent.llm.requests[0]["messages"][-1]
    assert said["role"] == "user"
    words = said["content"].lower()
    assert "forward" in words and "meters" in words, words
    assert agent.llm.requests[0]["stream"] is True
    assert "end_call" in {t["function"]["name"] for t in agent.llm.requests[0]["tools"]}
    # The caller hears the first sentence while the model is still streaming the rest.
    async with asyncio.timeout(15):
        while call.first_heard_at is None:
            await asyncio.sleep(0.02)
        while agent.llm.streams_finished < 1:
            await asyncio.sleep(0.02)
    assert call.first_heard_at < agent.llm.finish_times[0]
    record = agent.stack.gateway.calls.get(call.call_id).record
    async with asyncio.timeout(15):  # the rest of the answer plays
        while not any(t["role"] == "assistant" for t in record.conversation):
            await asyncio.sleep(0.05)
    assert loud_frames(call.heard) > 100  # three sentences of speech, not a blip
    bot = agent.bots[0]
    assert bot.speculative_hits == 1  # the transcript was ready when the turn closed
    # A key press reaches the model as text.
    await call.press("5")
    await agent.requests(2)
    assert agent.llm.requests[1]["messages"][-1] == {
        "role": "user",
        "content": "[caller pressed 5]",
    }
    # The conversation is kept with the call record and served by the API.
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        r = await http.get(f"{agent.stack.gateway.url}/calls/{call.call_id}")
    turns = r.json()["conversation"]
    assert [t["role"] for t in turns[:3]] == ["user", "assistant", "user"]
    assert turns[1]["text"] == THREE_SENTENCES and "interrupted" not in turns[1]
    assert turns[2] == {**turns[2], "text": "[caller pressed 5]", "source": "dtmf"}
    await call.hang_up()


async def test_talking_over_a_long_answer_stops_it_and_keeps_what_was_heard() -> None:
    rules = (Rule("forward", reply=LONG_ANSWER),)
    agent = await _agent(ScriptedLLM(tokens_per_s=8, rules=rules))
    try:
        call = await agent.call()
        await agent.say(call, "goforward.wav")
        async with asyncio.timeout(15):
            while call.first_heard_at is None:
                await asyncio.sleep(0.02)
        await asyncio.sleep(2.0)  # about two sentences in, of an ~11 s stream
        await agent.say(call, "cards-005.wav")
        await agent.requests(2)
        history = agent.llm.requests[1]["messages"]
        assistant = [m for m in history if m["role"] == "assistant"]
        assert len(assistant) == 1
        kept = assistant[0]["content"]
        assert kept and LONG_ANSWER.startswith(kept) and len(kept) < len(LONG_ANSWER) // 2, kept
        assert history[-1]["role"] == "user" and "hearts" in history[-1]["content"].lower()
        # The first stream was cut off, not read to the end.
        await asyncio.sleep(0.5)
        assert agent.llm.streams_finished <= 1
        record = agent.stack.gateway.calls.get(call.call_id).record
        cut = [t for t in record.conversation if t.get("interrupted")]
        assert cut and cut[0]["generated"].startswith(kept) and cut[0]["text"] == kept
        await call.hang_up()
    finally:
        await _close(agent)


async def test_saying_goodbye_ends_the_call_with_terminate(agent: Agent) -> None:
    call = await agent.call()
    await agent.say(call, "forever-2.wav")  # scripted: "forever" -> end_call
    async with asyncio.timeout(20):
        await call.ended.wait()
    assert call.end_reason == "hung up by the business"
    actions = [a.action for a in agent.stack.sandbox.actions(call.call_id)]
    assert actions == ["pre_accept", "accept", "terminate"]
    assert loud_frames(call.heard) > 10  # the goodbye was said before hanging up
    record = agent.stack.gateway.calls.history[call.call_id]
    assert record.end_reason == "the agent ended the call"
    assert [t["name"] for t in record.conversation if t["role"] == "tool"] == ["end_call"]


async def test_model_errors_give_an_apology_and_never_a_stuck_call() -> None:
    agent = await _agent(
        ScriptedLLM(), llm_wait=1.0, apology="Sorry, say again?", bye_failures="Sorry, goodbye."
    )
    try:
        call = await agent.call()
        session = agent.stack.gateway.calls.get(call.call_id)
        record = session.record
        agent.llm.fail_next("500", "hang")
        heard = 0
        for n, recording in enumerate(["cards-001.wav", "cards-003.wav"], start=1):
            await agent.say(call, recording)
            async with asyncio.timeout(15):  # the apology (after the 1 s timeout for "hang")
                while len([t for t in record.conversation if t["role"] == "event"]) < n:
                    await asyncio.sleep(0.05)
                while loud_frames(call.heard) < heard + 20:
                    await asyncio.sleep(0.05)
            heard = loud_frames(call.heard)
            assert session.state is CallState.ACTIVE
        await agent.llm.aclose()  # the model server goes away: the third failure in a row
        await agent.say(call, "cards-004.wav")
        async with asyncio.timeout(20):
            await call.ended.wait()
        assert loud_frames(call.heard) > heard + 20  # said why before hanging up
        actions = [a.action for a in agent.stack.sandbox.actions(call.call_id)]
        assert actions[-1] == "terminate"
        record = agent.stack.gateway.calls.history[call.call_id]
        failures = [t["text"] for t in record.conversation if t["role"] == "event"]
        assert len(failures) == 3, failures
        assert "HTTP 500" in failures[0] and "within 1 s" in failures[1]
        assert "cannot be reached" in failures[2]
        assert record.end_reason == "the language model kept failing"
    finally:
        await _close(agent)


class Navigator(AgentBot):
    """A plugin's agent with a tool of its own."""

    moves: list[tuple[int, str]] = []

    @tool
    async def move(self, meters: int, direction: Literal["forward", "back"]) -> str:
        """Move the robot.

        Args:
            meters: how far
            direction: which way
        """
        self.moves.append((meters, direction))
        return f"moved {meters} meters {direction}"


async def test_a_plugin_tool_is_called_with_typed_arguments() -> None:
    rules = (Rule("forward", tool="move", arguments={"meters": 10.0, "direction": "forward"}),)
    agent = await _agent(ScriptedLLM(rules=rules), bot=Navigator)
    Navigator.moves = []
    try:
        call = await agent.call()
        await agent.say(call, "goforward.wav")
        await agent.requests(2)
        assert Navigator.moves == [(10, "forward")]
        assert isinstance(Navigator.moves[0][0], int)
        tools = {t["function"]["name"]: t["function"] for t in agent.llm.requests[0]["tools"]}
        assert tools["move"]["parameters"]["properties"]["direction"]["enum"] == [
            "forward",
            "back",
        ]
        result = agent.llm.requests[1]["messages"][-1]
        assert result["role"] == "tool" and result["content"] == "moved 10 meters forward"
        start = loud_frames(call.heard)
        await asyncio.sleep(2.0)
        assert loud_frames(call.heard) > start + 20  # "Okay, moved 10 meters forward."
        await call.hang_up()
    finally:
        await _close(agent)


async def test_no_input_reprompts_then_ends_the_call() -> None:
    agent = await _agent(ScriptedLLM(), no_input_s=0.8)
    try:
        call = await agent.call()
        started = time.monotonic()
        async with asyncio.timeout(20):
            await call.ended.wait()
        assert time.monotonic() - started > 1.6  # two timeouts
        assert loud_frames(call.heard) > 40  # the re-prompt and the goodbye
        record = agent.stack.gateway.calls.history[call.call_id]
        assert record.end_reason == "no input from the caller"
        assert [t["text"] for t in record.conversation] == [
            "no input: re-prompt",
            "no input: call ended",
        ]
        assert agent.llm.requests == []
    finally:
        await _close(agent)


@pytest.mark.slow
async def test_the_maximum_call_length_ends_the_call_politely() -> None:
    agent = await _agent(ScriptedLLM(), max_call_s=1.0)
    try:
        call = await agent.call()
        async with asyncio.timeout(20):
            await call.ended.wait()
        assert loud_frames(call.heard) > 20  # the goodbye
        actions = [a.action for a in agent.stack.sandbox.actions(call.call_id)]
        assert actions[-1] == "terminate"
        record = agent.stack.gateway.calls.history[call.call_id]
        assert record.end_reason == "maximum call length reached"
    finally:
        await _close(agent)
