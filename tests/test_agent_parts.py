"""The agent's parts on their own: tools, sentences, the LLM client, settings, transcribers."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Literal

import pytest

from gateway.agent.bot import AgentBot
from gateway.agent.config import AgentConfig
from gateway.agent.llm import Finish, LLMClient, LLMSettings, ToolCall
from gateway.agent.sentences import SentenceSplitter
from gateway.agent.tools import Tool, ToolArgumentError
from gateway.errors import ConfigError, LLMError
from gateway.media.audio import load_wav
from gateway.pipeline.plugins import load_tts, session_for
from gateway.sandbox.llm import Rule, ScriptedLLM
from gateway.stt import load_transcriber
from gateway.stt.http import OpenAITranscriber

from .conftest import AUDIO


async def book(people: int, when: str, area: Literal["inside", "outside"] = "inside") -> str:
    """Book a table.

    Args:
        people: how many guests
        when: the time, e.g. 19:30
    """
    return f"{people} at {when} {area}"


async def test_tool_schema_comes_from_the_signature_and_docstring() -> None:
    t = Tool.from_function(book)
    assert t.schema["function"]["description"] == "Book a table."
    params = t.parameters
    assert params["required"] == ["people", "when"]
    assert params["properties"]["people"] == {"type": "integer", "description": "how many guests"}
    assert params["properties"]["area"] == {"type": "string", "enum": ["inside", "outside"]}
    assert await t('{"people": 4.0, "when": "19:30"}') == "4 at 19:30 inside"
    for bad in ('{"people": 2.5, "when": "x"}', '{"when": "x"}', "[1]", '{"people": 2, "when": 3}'):
        with pytest.raises(ToolArgumentError):
            t.convert(bad)


def test_untyped_tools_are_refused_at_definition() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ConfigError, match="type hint"):
        Tool.from_function(untyped)


def test_sentences_are_cut_as_tokens_arrive() -> None:
    splitter = SentenceSplitter()
    out: list[str] = []
    text = "Hello there! Dr. Smith walked 3.5 meters. Is that far? Not really"
    for i, token in enumerate(text.split(" ")):
        out += splitter.feed(token if i == 0 else " " + token)
    assert out == ["Hello there!", "Dr. Smith walked 3.5 meters.", "Is that far?"]
    assert splitter.flush() == "Not really"
    long = SentenceSplitter().feed("word, " * 60)
    assert long and all(len(s) <= 181 for s in long)


async def test_llm_client_streams_text_and_assembles_tool_calls() -> None:
    rules = (Rule("table", reply="Sure.", tool="book", arguments={"people": 2, "when": "8pm"}),)
    server = await ScriptedLLM(rules=rules, tokens_per_s=0).start()
    client = LLMClient(LLMSettings(server.url, "sandbox"))
    try:
        items = [
            item
            async for item in client.stream(
                [{"role": "user", "content": "a table please"}], [Tool.from_function(book).schema]
            )
        ]
        assert "".join(i for i in items if isinstance(i, str)) == "Sure."
        finish = items[-1]
        assert isinstance(finish, Finish) and finish.reason == "tool_calls"
        (call,) = finish.tool_calls
        assert isinstance(call, ToolCall) and call.name == "book"
        assert json.loads(call.arguments) == {"people": 2, "when": "8pm"}
        server.fail_next("500")
        with pytest.raises(LLMError, match="HTTP 500") as info:
            async for _ in client.stream([{"role": "user", "content": "hi"}]):
                pass
        assert info.value.status == 500
    finally:
        await client.aclose()
        await server.aclose()


def test_misconfiguration_fails_at_start_up_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_LLM_URL"):
        AgentConfig.from_env({})
    with pytest.raises(ConfigError, match="GATEWAY_LLM_MODEL"):
        AgentConfig.from_env({"GATEWAY_LLM_URL": "http://127.0.0.1:9/v1"})
    with pytest.raises(ConfigError, match="GATEWAY_STT"):
        load_transcriber(env={"GATEWAY_STT": "nope"})
    with pytest.raises(ConfigError, match="GATEWAY_TTS"):
        load_tts(env={"GATEWAY_TTS": "nope"})
    monkeypatch.setenv("GATEWAY_LLM_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("GATEWAY_LLM_MODEL", raising=False)
    with pytest.raises(ConfigError, match="GATEWAY_LLM_MODEL"):
        session_for("agent")
    monkeypatch.setenv("GATEWAY_LLM_MODEL", "m")
    monkeypatch.setenv("GATEWAY_STT", "nope")
    with pytest.raises(ConfigError, match="GATEWAY_STT"):
        session_for("agent")
    assert AgentBot.configure  # the hook session_for calls


def test_prompt_is_read_from_a_file(tmp_path: pytest.TempPathFactory) -> None:
    prompt = tmp_path / "prompt.txt"  # type: ignore[operator]
    prompt.write_text("You sell bicycles.\n")
    env = {"GATEWAY_LLM_URL": "http://x/v1", "GATEWAY_LLM_MODEL": "m"}
    assert AgentConfig.from_env({**env, "GATEWAY_AGENT_PROMPT": str(prompt)}).prompt == (
        "You sell bicycles."
    )
    assert AgentConfig.from_env({**env, "GATEWAY_AGENT_PROMPT": "Be brief."}).prompt == "Be brief."


async def test_whisper_hears_the_words_and_the_http_backend_matches() -> None:
    whisper = load_transcriber("whisper", {})
    pcm = load_wav(AUDIO / "forever-2.wav")
    local = await whisper.transcribe(pcm)
    assert "these days go on forever" in local.text.lower()
    assert local.confidence is not None and 0.3 < local.confidence <= 1.0
    # The same model behind the sandbox's OpenAI-compatible transcription endpoint.
    server = await ScriptedLLM(transcriber=whisper).start()
    remote = OpenAITranscriber(server.url, model="whisper-1")
    try:
        assert (await remote.transcribe(pcm)).text == local.text
    finally:
        await remote.aclose()
        await server.aclose()


def test_an_echo_gateway_loads_no_agent_machinery() -> None:
    # A fresh interpreter: this one has long imported everything.
    probe = (
        "import sys\n"
        "from gateway.app import Gateway\n"
        "from gateway.pipeline.plugins import load_bot, session_for\n"
        "session_for('echo'); load_bot('echo')()\n"
        "heavy = {'faster_whisper', 'ctranslate2', 'openai', 'gateway.agent', 'gateway.stt'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
