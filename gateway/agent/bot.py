"""The ``agent`` bot: the caller speaks, a language model thinks, the answer is streamed speech.

Each caller turn is transcribed (speculatively, as soon as the caller pauses),
added to the conversation and sent to the model; the reply streams back, is cut
into sentences as tokens arrive, and each sentence is synthesized and played
while the model is still writing the next. Barge-in stops the stream and the
queued speech, and the assistant turn is kept as the words the caller heard.

Settings (read at start-up; a bad one fails there, naming the variable):
``GATEWAY_LLM_*`` (see :mod:`gateway.agent.llm`), ``GATEWAY_STT`` (see
:mod:`gateway.stt`), ``GATEWAY_AGENT_PROMPT`` (system prompt: a file path or the
text), ``GATEWAY_AGENT_GREETING``, ``GATEWAY_AGENT_NO_INPUT`` (seconds, default
10), ``GATEWAY_AGENT_MAX_CALL`` (seconds, default 600).

Plugins add tools by subclassing and marking typed methods with
:func:`~gateway.agent.tools.tool`; register the subclass in ``gateway.bots``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LLMError, TranscriptionError
from ..pipeline.bot import BaseBot, CallControl, Interruption, Utterance
from ..stt import Transcript, load_transcriber
from .config import AgentConfig, AgentServices, default_services
from .conversation import Conversation
from .llm import Finish, ToolCall
from .sentences import SentenceSplitter
from .tools import Tool, ToolArgumentError, is_tool, tool

log = logging.getLogger(__name__)


@dataclass
class TurnTiming:
    """When each step of one answer happened (``time.perf_counter()`` seconds)."""

    turn_closed: float
    transcript_ready: float = 0.0
    speculative: bool = False
    first_sentence: float = 0.0
    """The model's first complete sentence arrived."""
    first_audio: float = 0.0
    """Its speech was synthesized and handed to playout."""


@dataclass
class _Reply:
    """One streamed answer: what was generated and what the caller heard of it."""

    generated: list[str] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)
    produced: int = 0
    """Sentences synthesized and queued."""
    playing: str | None = None
    interrupted: bool = False


class AgentBot(BaseBot):
    """An LLM voice agent; one instance per call (subclass it to add tools)."""

    def __init__(self, services: AgentServices | None = None) -> None:
        self.services = services or default_services()
        self.config = self.services.config
        self.tools: dict[str, Tool] = {}
        for name in dir(type(self)):
            if is_tool(getattr(type(self), name, None)):
                self.tools[name] = Tool.from_function(getattr(self, name))
        self.timings: list[TurnTiming] = []
        self.speculative_hits = 0
        self.speculative_misses = 0
        self.speculative_started = 0
        self._call: CallControl | None = None
        self._conversation = Conversation(self.config.prompt)
        self._reply_task: asyncio.Task[None] | None = None
        self._reply: _Reply | None = None
        self._interruption: Interruption | None = None
        self._speculative: tuple[int, int, asyncio.Task[Transcript]] | None = None
        self._limit_task: asyncio.Task[None] | None = None
        self._warmup: asyncio.Task[None] | None = None
        self._goodbye: str | None = None
        self._failures = 0
        self._reprompts = 0
        self._ending = False  # the goodbye is being said: nothing may cancel the hang-up

    @classmethod
    def configure(cls) -> None:
        """Check the settings at start-up (the gateway calls this once per process)."""
        AgentConfig.from_env()
        load_transcriber()
        import openai.resources.chat  # noqa: F401  (slow first import: not on a call)

    @property
    def conversation(self) -> Conversation:
        """This call's conversation."""
        return self._conversation

    # --- the built-in tool ---------------------------------------------------------------

    @tool
    async def end_call(self, goodbye: str = "") -> str:
        """End the phone call: say a short goodbye, then hang up.

        Args:
            goodbye: the last words to say to the caller before hanging up
        """
        self._goodbye = goodbye.strip() or "Goodbye."
        return "the call ends after the goodbye"

    # --- bot events -----------------------------------------------------------------------

    async def on_start(self, call: CallControl) -> None:
        """Greet the caller (if a greeting is set) and wait for them."""
        self._call = call
        self._conversation = Conversation(self.config.prompt, record=call.conversation)
        self._limit_task = asyncio.create_task(self._time_limit())
        # Models load on first use; start loading now, while the caller starts talking.
        prepare = getattr(self.services.transcriber, "prepare", None)
        if prepare is not None and not getattr(self.services.transcriber, "loaded", True):
            self._warmup = asyncio.create_task(prepare())
        if self.config.greeting:
            self._start_reply(self._speak(self.config.greeting, record=True))
        else:
            call.expect_input(self.config.no_input_s)

    async def on_pause(self, call: CallControl, utterance: Utterance) -> None:
        """The caller paused: transcribe what they said so far, in case the turn ends here."""
        if self._speculative is not None:
            # Not started yet: it never runs. Running: it finishes, but nobody waits for it.
            self._speculative[2].cancel()
        self.speculative_started += 1
        task = asyncio.create_task(self.services.transcriber.transcribe(utterance.pcm))
        self._speculative = (utterance.started_ms, utterance.ended_ms, task)

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        """A caller turn: transcribe it (or take the speculative result) and answer."""
        timing = TurnTiming(turn_closed=time.perf_counter())
        if self._ending:
            return
        await self._stop_reply()
        try:
            transcript, timing.speculative = await self._transcribe(utterance)
        except TranscriptionError as exc:
            log.error("call %s: transcription failed: %s", call.info.call_id, exc)
            self._conversation.add_event(f"transcription failed: {exc}")
            self._start_reply(self._speak(self.config.not_heard))
            return
        timing.transcript_ready = time.perf_counter()
        text = transcript.text.strip()
        log.info("call %s: caller said %r", call.info.call_id, text[:200])
        if not text:  # a cough, a door: nothing to answer
            call.expect_input(self.config.no_input_s)
            return
        self._reprompts = 0
        self._conversation.add_user(text, confidence=transcript.confidence)
        self.timings.append(timing)
        self._start_reply(self._respond(timing))

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        """A key press reaches the model as text."""
        if self._ending:
            return
        await self._stop_reply()
        self._reprompts = 0
        self._conversation.add_user(f"[caller pressed {digit}]", source="dtmf")
        self._start_reply(self._respond(None))

    async def on_barge_in(self, call: CallControl, interruption: Interruption) -> None:
        """The caller talked over the answer: stop the model and the queued speech."""
        self._interruption = interruption
        await self._stop_reply()

    async def on_timeout(self, call: CallControl) -> None:
        """No input: re-prompt once, then end the call politely."""
        if self._reprompts < 1:
            self._reprompts += 1
            self._conversation.add_event("no input: re-prompt")
            self._start_reply(self._speak(self.config.reprompt))
            return
        self._conversation.add_event("no input: call ended")
        self._ending = True
        await call.say(self.config.bye_no_input, interruptible=False)
        await call.hangup("no input from the caller")

    async def on_hangup(self, call: CallControl) -> None:
        """Stop everything this call started."""
        current = asyncio.current_task()
        for task in (self._reply_task, self._limit_task, self._warmup):
            if task is not None and task is not current:
                task.cancel()
        if self._speculative is not None:
            self._speculative[2].cancel()

    # --- answering ------------------------------------------------------------------------

    def _start_reply(self, coro: Any) -> None:
        self._reply_task = asyncio.create_task(coro, name="agent-reply")

    async def _stop_reply(self) -> None:
        task = self._reply_task
        if self._ending:
            return
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        self._reply_task = None

    async def _transcribe(self, utterance: Utterance) -> tuple[Transcript, bool]:
        speculative, self._speculative = self._speculative, None
        if speculative is not None:
            started, ended, task = speculative
            if (started, ended) == (utterance.started_ms, utterance.ended_ms):
                self.speculative_hits += 1
                return await task, True
            task.cancel()  # the caller went on talking: that guess is stale
            self.speculative_misses += 1
        return await self.services.transcriber.transcribe(utterance.pcm), False

    async def _respond(self, timing: TurnTiming | None) -> None:
        """Answer the conversation so far (the reply task)."""
        call = self._call
        assert call is not None
        try:
            for _ in range(self.config.max_tool_rounds):
                finish = await self._complete(timing)
                timing = None
                if finish is None or not finish.tool_calls:
                    break
                await self._run_tools(finish.tool_calls)
                if self._goodbye is not None:
                    break
        except LLMError as exc:
            self._failures += 1
            log.warning(
                "call %s: LLM failed (%d in a row): %s", call.info.call_id, self._failures, exc
            )
            self._conversation.add_event(f"LLM failed: {exc}")
            if self._failures >= self.config.max_llm_failures:
                self._ending = True
                await call.say(self.config.bye_failures, interruptible=False)
                await call.hangup("the language model kept failing")
                return
            await call.say(self.config.apology)
            call.expect_input(self.config.no_input_s)
            return
        self._failures = 0
        if self._goodbye is not None:
            self._ending = True
            await call.say(self._goodbye, interruptible=False)
            self._conversation.add_event("agent ended the call")
            await call.hangup("the agent ended the call")
            return
        call.expect_input(self.config.no_input_s)

    async def _complete(self, timing: TurnTiming | None) -> Finish | None:
        """One streamed completion, spoken sentence by sentence; None if interrupted."""
        call = self._call
        assert call is not None
        reply = self._reply = _Reply()
        self._interruption = None
        sentences: asyncio.Queue[tuple[str, np.ndarray] | None] = asyncio.Queue()
        finish: Finish | None = None

        async def produce() -> None:
            nonlocal finish
            splitter = SentenceSplitter()
            tools = [t.schema for t in self.tools.values()]
            try:
                async for item in self.services.llm.stream(self._conversation.messages, tools):
                    if isinstance(item, Finish):
                        finish = item
                        continue
                    reply.generated.append(item)
                    for sentence in splitter.feed(item):
                        await sentences.put((sentence, await self._synthesize(sentence, timing)))
                        reply.produced += 1
                rest = splitter.flush()
                if rest:
                    await sentences.put((rest, await self._synthesize(rest, timing)))
                    reply.produced += 1
            finally:
                sentences.put_nowait(None)

        producer = asyncio.create_task(produce(), name="agent-llm")
        try:
            while (item := await sentences.get()) is not None:
                sentence, pcm = item
                reply.playing = sentence
                result = await call.play(pcm, label=sentence)
                reply.playing = None
                if result.interrupted:
                    reply.heard.append(
                        _heard_part(sentence, result.frames_played, result.frames_total)
                    )
                    reply.interrupted = True
                    return None
                reply.heard.append(sentence)
            await producer  # raises the LLM's error, if any
            return finish
        finally:
            if not producer.done():
                producer.cancel()  # closes the HTTP stream: the server stops generating
                await asyncio.wait([producer])
            self._finish_reply(reply, finish)

    def _finish_reply(self, reply: _Reply, finish: Finish | None) -> None:
        """Keep the assistant turn as heard (also when cancelled mid-sentence)."""
        if reply.playing is not None:  # cancelled while a sentence played: barge-in
            cut = self._interruption
            if cut is not None and cut.label == reply.playing:
                total = cut.frames_played + cut.frames_dropped
                reply.heard.append(_heard_part(reply.playing, cut.frames_played, total))
            reply.interrupted = True
        generated = "".join(reply.generated).strip()
        if (finish is None and generated) or len(reply.heard) < reply.produced:
            reply.interrupted = True  # stopped before the model or the playout finished
        heard = " ".join(h for h in reply.heard if h).strip()
        tool_calls = finish.tool_calls if finish is not None and not reply.interrupted else ()
        if reply.interrupted:
            log.info(
                "call %s: answer cut after %d of %d characters",
                self._call.info.call_id if self._call else "?",
                len(heard),
                len(generated),
            )
        self._conversation.add_assistant(
            heard, generated=generated, interrupted=reply.interrupted, tool_calls=tool_calls
        )
        self._reply = None

    async def _synthesize(self, sentence: str, timing: TurnTiming | None) -> np.ndarray:
        if timing is not None and not timing.first_sentence:
            timing.first_sentence = time.perf_counter()
        chunks = [c async for c in self.services.tts.synthesize(sentence)]
        if timing is not None and not timing.first_audio:
            timing.first_audio = time.perf_counter()
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    async def _run_tools(self, calls: tuple[ToolCall, ...]) -> None:
        for call in calls:
            function = self.tools.get(call.name)
            if function is None:
                result = f"error: there is no tool called {call.name!r}"
            else:
                try:
                    result = await function(call.arguments)
                except ToolArgumentError as exc:
                    result = f"error: {exc}"
                except Exception as exc:  # a plugin's bug must not end the call
                    log.exception("tool %s failed", call.name)
                    result = f"error: the tool failed ({type(exc).__name__})"
            log.info("tool %s(%s) -> %r", call.name, call.arguments[:200], result[:200])
            self._conversation.add_tool_result(call, result)

    async def _speak(self, text: str, *, record: bool = False) -> None:
        """Say a fixed line (greeting, re-prompt, apology), then wait for the caller."""
        call = self._call
        assert call is not None
        result = await call.say(text)
        if record:
            heard = (
                text
                if not result.interrupted
                else _heard_part(text, result.frames_played, result.frames_total)
            )
            self._conversation.add_assistant(heard, generated=text, interrupted=result.interrupted)
        call.expect_input(self.config.no_input_s)

    async def _time_limit(self) -> None:
        await asyncio.sleep(self.config.max_call_s)
        call = self._call
        assert call is not None
        await self._stop_reply()
        self._ending = True
        self._conversation.add_event("maximum call length reached")
        await call.say(self.config.bye_time_limit, interruptible=False)
        await call.hangup("maximum call length reached")


def _heard_part(sentence: str, played: int, total: int) -> str:
    """The words of ``sentence`` the caller heard, from the share of its frames played."""
    if total <= 0 or played <= 0:
        return ""
    if played >= total:
        return sentence
    cut = len(sentence) * played // total
    # Keep only whole words: a half-heard word was not heard.
    return sentence[:cut].rsplit(" ", 1)[0] if " " in sentence[:cut] else ""
