"""The LLM client: OpenAI Chat Completions, streamed, with tool calls.

OpenAI, Ollama, vLLM, llama.cpp's server and LM Studio all speak this protocol
(server-sent events of ``chat.completion.chunk`` objects, then ``[DONE]``); the
official ``openai`` SDK does the HTTP and the SSE parsing. :meth:`LLMClient.stream`
yields text as it arrives and, at the end, the tool calls assembled from their
``delta.tool_calls`` fragments.

Every failure (connection refused, HTTP error, a stream that stalls) becomes one
:class:`~gateway.errors.LLMError`, so the agent has a single thing to apologize for.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx
import openai
from openai.types.chat import ChatCompletionChunk

from ..config import Secret
from ..errors import ConfigError, LLMError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMSettings:
    """Where the model is and how long to wait for it."""

    url: str
    """Base URL, e.g. ``http://127.0.0.1:11434/v1`` (Ollama)."""
    model: str
    api_key: Secret | None = None
    """Sent as ``Authorization: Bearer``; optional for local servers."""
    first_token_timeout: float = 5.0
    """Seconds from the request to the first streamed chunk."""
    stall_timeout: float = 5.0
    """Seconds between two chunks before the stream counts as stalled."""
    temperature: float | None = None
    max_tokens: int | None = 400

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LLMSettings:
        """Read ``GATEWAY_LLM_URL``, ``_MODEL``, ``_API_KEY`` and ``_TIMEOUT``."""
        env = os.environ if env is None else env
        url = env.get("GATEWAY_LLM_URL")
        if not url:
            raise ConfigError(
                "GATEWAY_LLM_URL is not set: the agent needs an OpenAI-compatible server "
                "(e.g. http://127.0.0.1:11434/v1 for Ollama); `gateway sandbox --bot agent` "
                "runs a scripted local one"
            )
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"GATEWAY_LLM_URL must be an http(s) URL, not {url!r}")
        model = env.get("GATEWAY_LLM_MODEL")
        if not model:
            raise ConfigError("GATEWAY_LLM_MODEL is not set: name the model (e.g. llama3.2)")
        raw = env.get("GATEWAY_LLM_TIMEOUT") or "5"
        try:
            timeout = float(raw)
        except ValueError:
            raise ConfigError(f"GATEWAY_LLM_TIMEOUT must be seconds, not {raw!r}") from None
        if timeout <= 0:
            raise ConfigError("GATEWAY_LLM_TIMEOUT must be positive")
        key = env.get("GATEWAY_LLM_API_KEY")
        return cls(
            url.rstrip("/"),
            model,
            Secret(key) if key else None,
            first_token_timeout=timeout,
            stall_timeout=timeout,
        )


@dataclass(frozen=True)
class ToolCall:
    """A function the model asked for; ``arguments`` is its JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Finish:
    """The end of one completion: why it stopped, and the tool calls, if any."""

    reason: str
    tool_calls: tuple[ToolCall, ...]


class LLMClient:
    """One OpenAI-compatible endpoint; share it between calls (it pools connections)."""

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self._client = openai.AsyncOpenAI(
            base_url=settings.url,
            api_key=settings.api_key.value if settings.api_key else "none",
            # The read timeout bounds each wait between chunks; the first token has its own.
            timeout=httpx.Timeout(settings.stall_timeout, connect=min(3.0, settings.stall_timeout)),
            max_retries=0,  # a caller is waiting: no silent retries, the agent apologizes
        )
        # The SDK imports its resource modules on first access (~1 s of CPU, seconds on a
        # busy machine): pay that here, at start-up, not on a caller's first turn.
        self._completions = self._client.chat.completions

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.close()

    async def stream(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] = ()
    ) -> AsyncIterator[str | Finish]:
        """Yield content deltas as they arrive, then one :class:`Finish`.

        Raises LLMError on any failure; closing the iterator early closes the HTTP
        stream (the server stops generating).
        """
        settings = self.settings
        try:
            async with asyncio.timeout(settings.first_token_timeout) as deadline:
                created = await self._completions.create(
                    model=settings.model,
                    messages=list(messages),  # type: ignore[arg-type]
                    stream=True,
                    tools=list(tools) if tools else openai.omit,  # type: ignore[arg-type]
                    temperature=openai.omit
                    if settings.temperature is None
                    else settings.temperature,
                    max_tokens=openai.omit if settings.max_tokens is None else settings.max_tokens,
                )
                stream = cast("openai.AsyncStream[ChatCompletionChunk]", created)
                chunks = aiter(stream)
                first = await anext(chunks, None)
                deadline.reschedule(None)
        except TimeoutError:
            raise LLMError(
                f"no answer from the model within {settings.first_token_timeout:g} s"
            ) from None
        except openai.APIStatusError as exc:
            raise LLMError(
                f"the model server answered HTTP {exc.status_code}: {str(exc)[:200]}",
                status=exc.status_code,
            ) from exc
        except openai.APIError as exc:
            raise LLMError(f"the model server cannot be reached: {exc}") from exc
        calls: dict[int, dict[str, str]] = {}
        reason = "stop"
        try:
            chunk = first
            while chunk is not None:
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta.content:
                        yield delta.content
                    for part in delta.tool_calls or ():
                        call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                        if part.id:
                            call["id"] = part.id
                        if part.function is not None:
                            call["name"] += part.function.name or ""
                            call["arguments"] += part.function.arguments or ""
                    if choice.finish_reason:
                        reason = choice.finish_reason
                chunk = await anext(chunks, None)
        except openai.APIError as exc:
            raise LLMError(f"the model's stream broke off: {exc}") from exc
        except httpx.HTTPError as exc:
            raise LLMError(f"the model's stream broke off: {exc!r}") from exc
        finally:
            await stream.close()
        tool_calls = tuple(
            ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}")
            for i, c in sorted(calls.items())
            if c["name"]
        )
        yield Finish(reason, tool_calls)
