"""The agent's settings, and the services every agent call of a process shares.

``GATEWAY_AGENT_*`` settings are read here (the LLM's in :mod:`gateway.agent.llm`,
the transcriber's in :mod:`gateway.stt`); a bad one raises ConfigError naming it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..perloop import per_loop
from ..pipeline.tts import TTS
from ..stt import Transcriber, load_transcriber
from .llm import LLMClient, LLMSettings

DEFAULT_PROMPT = (
    "You are a friendly voice assistant answering a phone call. Your words are spoken "
    "aloud: answer in one to three short sentences of plain English, with no lists, "
    "markdown or emoji. Caller key presses reach you as [caller pressed N]. When the "
    "caller says goodbye or wants to hang up, call the end_call tool."
)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name) or ""
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, not {raw!r}")
    return value


def _is_file(text: str) -> bool:
    if "\n" in text or len(text) > 1024:
        return False
    try:
        return Path(text).is_file()
    except OSError:  # e.g. a name component too long: it is prompt text
        return False


@dataclass(frozen=True)
class AgentConfig:
    """How the agent behaves; :meth:`from_env` reads the ``GATEWAY_AGENT_*`` settings."""

    llm: LLMSettings
    prompt: str = DEFAULT_PROMPT
    greeting: str = ""
    no_input_s: float = 10.0
    """Silence after the agent spoke before it re-prompts (once), then ends the call."""
    max_call_s: float = 600.0
    max_llm_failures: int = 3
    """Failed turns in a row after which the call ends politely."""
    max_tool_rounds: int = 4
    apology: str = "Sorry, I'm having trouble answering right now. Could you say that again?"
    not_heard: str = "Sorry, I didn't catch that. Could you say it again?"
    reprompt: str = "Are you still there?"
    bye_no_input: str = "I haven't heard anything, so I'll end the call now. Goodbye."
    bye_time_limit: str = "We have reached the time limit for this call. Goodbye."
    bye_failures: str = "Sorry, I can't answer right now. Please call again later. Goodbye."

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentConfig:
        """Read the settings; ConfigError names the one that is wrong."""
        env = os.environ if env is None else env
        prompt = env.get("GATEWAY_AGENT_PROMPT") or DEFAULT_PROMPT
        if _is_file(prompt):
            try:
                prompt = Path(prompt).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"GATEWAY_AGENT_PROMPT: cannot read {prompt}: {exc}") from exc
        return cls(
            LLMSettings.from_env(env),
            prompt=prompt.strip(),
            greeting=(env.get("GATEWAY_AGENT_GREETING") or "").strip(),
            no_input_s=_seconds(env, "GATEWAY_AGENT_NO_INPUT", 10.0),
            max_call_s=_seconds(env, "GATEWAY_AGENT_MAX_CALL", 600.0),
        )


@dataclass
class AgentServices:
    """What every agent call of a process shares: one LLM client, one transcriber, one voice."""

    config: AgentConfig
    llm: LLMClient
    transcriber: Transcriber
    tts: TTS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentServices:
        """Build from the settings (no model is loaded until the first utterance)."""
        from ..pipeline.plugins import default_tts

        config = AgentConfig.from_env(env)
        transcriber = load_transcriber(env=env)
        return cls(config, LLMClient(config.llm), transcriber, default_tts())

    async def aclose(self) -> None:
        """Close the LLM client's connections."""
        await self.llm.aclose()


# One set of services per event loop (the LLM client's connections belong to a loop).
_services = per_loop(lambda loop: AgentServices.from_env())


def default_services() -> AgentServices:
    """The process's services from ``os.environ``, built on first use in this event loop."""
    return _services(asyncio.get_running_loop())
