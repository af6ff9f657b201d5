"""A scripted OpenAI-compatible model server: the agent's LLM, offline and deterministic.

It speaks the Chat Completions protocol the way OpenAI, Ollama or vLLM do:
``POST /v1/chat/completions`` with ``stream: true`` answers with server-sent
events (``chat.completion.chunk`` objects carrying content deltas or tool-call
deltas, a ``finish_reason``, then ``data: [DONE]``), after a configurable time
to first token and at a configurable rate of tokens per second. It also serves
``GET /v1/models`` and, given a transcriber, ``POST /v1/audio/transcriptions``
(like faster-whisper-server).

What it answers, from the last message of the request (first match wins):

* a tool result -> "Okay, <result>.";
* a :class:`Rule` whose trigger word is in the caller's words (defaults: "goodbye"
  or "bye" call ``end_call``; "story", "long" or "everything" get a long answer);
* anything else -> "You said: <the caller's words>."

Faults for tests: :meth:`ScriptedLLM.fail_next` makes the next requests answer
HTTP 500 or hang; stopping the server makes the model unreachable.

:func:`model_for_bot` stands it in for ``GATEWAY_LLM_URL`` when ``gateway
sandbox`` (or ``make phone``) runs an agent bot and no real model is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import wave
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiohttp import web

from ..stt import Transcriber

LONG_ANSWER = (
    "Here is the long answer you asked for. "
    "It starts with the weather, which has been mild and dry for most of the week. "
    "Then there is the traffic, which was light in the morning and heavy in the evening. "
    "After that comes the news from the harbour, where three new ships arrived today. "
    "The market opens at nine and closes at six, except on Sundays. "
    "The museum has a new exhibition about the history of the telephone. "
    "Finally, the library extended its opening hours until ten in the evening. "
    "That is everything I know for now."
)


@dataclass(frozen=True)
class Rule:
    """When the caller says ``trigger`` (a word), answer ``reply`` and/or call ``tool``."""

    trigger: str
    reply: str = ""
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("goodbye", tool="end_call", arguments={"goodbye": "Goodbye, thanks for calling!"}),
    Rule("bye", tool="end_call", arguments={"goodbye": "Goodbye, thanks for calling!"}),
    Rule("story", reply=LONG_ANSWER),
    Rule("long", reply=LONG_ANSWER),
    Rule("everything", reply=LONG_ANSWER),
)

Fault = Literal["500", "hang"]


class ScriptedLLM:
    """The server; ``await start()``, then point ``GATEWAY_LLM_URL`` at :attr:`url`."""

    def __init__(
        self,
        *,
        model: str = "sandbox",
        ttft_ms: float = 0.0,
        tokens_per_s: float = 50.0,
        rules: tuple[Rule, ...] = DEFAULT_RULES,
        transcriber: Transcriber | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.model = model
        self.ttft_ms = ttft_ms
        """Milliseconds from the request to the first chunk."""
        self.tokens_per_s = tokens_per_s
        """Content tokens (words) streamed per second; 0 streams them all at once."""
        self.rules = rules
        self.transcriber = transcriber
        self.requests: list[dict[str, Any]] = []
        """Every chat request body received, in order (tests read the history here)."""
        self.streams_finished = 0
        """Streams sent to the end (``[DONE]``), not cut off by the client."""
        self.finish_times: list[float] = []
        """``time.monotonic()`` when each stream sent ``[DONE]``."""
        self._faults: deque[Fault] = deque()
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.url = ""
        """Base URL (``http://127.0.0.1:PORT/v1``) once started."""

    def fail_next(self, *faults: Fault) -> None:
        """Make the next requests fail: ``"500"`` answers HTTP 500, ``"hang"`` never answers."""
        self._faults.extend(faults)

    async def start(self) -> ScriptedLLM:
        """Listen (on a free port by default)."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{self._host}:{port}/v1"
        return self

    async def aclose(self) -> None:
        """Stop serving (the model becomes unreachable)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the script --------------------------------------------------------------------

    def answer(self, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        """The reply text and the tool call (name and arguments) for a request."""
        messages = body.get("messages") or [{}]
        last = messages[-1]
        if last.get("role") == "tool":
            return f"Okay, {str(last.get('content', '')).rstrip('.')}.", None
        said = str(last.get("content") or "")
        words = set(re.findall(r"[a-z']+", said.lower()))
        tools = {t.get("function", {}).get("name") for t in body.get("tools") or ()}
        for rule in self.rules:
            if rule.trigger.lower() in words:
                call = None
                if rule.tool and rule.tool in tools:
                    call = {"name": rule.tool, "arguments": rule.arguments}
                if rule.reply or call:
                    return rule.reply, call
        return f"You said: {said.strip().rstrip('.')}.", None

    # --- HTTP --------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "owned_by": "sandbox"}],
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "body must be JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is required")
        self.requests.append(body)
        fault = self._faults.popleft() if self._faults else None
        if fault == "500":
            return _error(500, "the sandbox model failed (scripted)", kind="server_error")
        if fault == "hang":
            await asyncio.sleep(3600)
        text, call = self.answer(body)
        if self.ttft_ms:
            await asyncio.sleep(self.ttft_ms / 1000)
        completion_id = f"chatcmpl-{len(self.requests)}"
        if not body.get("stream"):
            return web.json_response(_completion(completion_id, self.model, text, call))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        chunk = _Chunker(completion_id, self.model)
        await response.write(chunk.event({"role": "assistant", "content": ""}))
        delay = 1.0 / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        for token in re.findall(r"\s*\S+", text):
            if delay:
                await asyncio.sleep(delay)
            await response.write(chunk.event({"content": token}))
        if call is not None:
            arguments = json.dumps(call["arguments"])
            head = {"index": 0, "id": f"call_{len(self.requests)}", "type": "function"}
            await response.write(
                chunk.event(
                    {"tool_calls": [{**head, "function": {"name": call["name"], "arguments": ""}}]}
                )
            )
            # Arguments arrive in pieces, as real servers send them.
            for i in range(0, len(arguments), 8):
                part = {"index": 0, "function": {"arguments": arguments[i : i + 8]}}
                await response.write(chunk.event({"tool_calls": [part]}))
        await response.write(chunk.event({}, "tool_calls" if call else "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.streams_finished += 1
        self.finish_times.append(time.monotonic())
        return response

    async def _transcriptions(self, request: web.Request) -> web.Response:
        if self.transcriber is None:
            return _error(404, "this sandbox server has no transcriber")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return _error(400, "'file' (audio) is required")
        try:
            with wave.open(upload.file, "rb") as w:
                if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
                    return _error(400, "the sandbox takes 16 kHz mono 16-bit WAV only")
                pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)
        except (wave.Error, EOFError) as exc:
            return _error(400, f"unreadable audio: {exc}")
        transcript = await self.transcriber.transcribe(pcm)
        return web.json_response({"text": transcript.text})


class _Chunker:
    def __init__(self, completion_id: str, model: str) -> None:
        self.base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

    def event(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk = {
            **self.base,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()


def _completion(
    completion_id: str, model: str, text: str, call: dict[str, Any] | None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if call is not None:
        message["tool_calls"] = [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
            }
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}
        ],
    }


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


def _is_agent(bot: str) -> bool:
    from ..agent.bot import AgentBot
    from ..pipeline.plugins import load_bot

    factory = load_bot(bot)
    return isinstance(factory, type) and issubclass(factory, AgentBot)


@contextlib.asynccontextmanager
async def model_for_bot(bot: str) -> AsyncIterator[ScriptedLLM | None]:
    """Run the scripted model as ``GATEWAY_LLM_URL`` while an agent ``bot`` needs one.

    Yields None (and changes nothing) for other bots or when ``GATEWAY_LLM_URL`` is
    already set, so the same demo talks to a real model when one is configured.
    """
    if os.environ.get("GATEWAY_LLM_URL") or not _is_agent(bot):
        yield None
        return
    server = await ScriptedLLM(tokens_per_s=50).start()
    saved = {k: os.environ.get(k) for k in ("GATEWAY_LLM_URL", "GATEWAY_LLM_MODEL")}
    os.environ["GATEWAY_LLM_URL"] = server.url
    os.environ["GATEWAY_LLM_MODEL"] = os.environ.get("GATEWAY_LLM_MODEL") or server.model
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        await server.aclose()
