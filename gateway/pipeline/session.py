"""Runs one bot on one call: VAD turn-taking, barge-in, TTS and playout.

The per-frame path is synchronous and in-loop: each decoded 20 ms frame goes
through the VAD segmenter inside the media callback; only whole utterances and
DTMF digits are queued to the bot, whose handlers run one at a time in the
call's session task. What a caller's sound does to the bot's prompt (barge-in,
pause and resume) is :mod:`.bargein`; the loop-wide watch for turns whose frames
stopped is :mod:`.stall`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..call import Call, SessionFactory
from ..media.audio import load_wav
from ..media.pcm import SAMPLE_RATE, AudioBuffer, as_samples
from .bargein import BargeIn
from .bot import (
    Bot,
    CallInfo,
    Interruption,
    ListenSettings,
    PlaybackResult,
    Utterance,
)
from .stall import TurnStallCheck
from .tts import TTS
from .vad import SpeechEnded, SpeechStarted, VadConfig, VadEvent, VadSegmenter

log = logging.getLogger(__name__)

# How long a bot's on_hangup may take before it is abandoned.
HANGUP_GRACE = 2.0

# Silence inside a turn after which a bot with ``on_pause`` gets the speech so far
# (well before the VAD hangover closes the turn), e.g. to transcribe speculatively.
PAUSE_MS = 200


@dataclass
class SessionMetrics:
    """Per-call figures the benchmarks and the load tester read."""

    utterances: int = 0
    barge_ins: int = 0
    # Prompts paused for a sound that was not speech, then resumed.
    false_interruptions: int = 0
    # End of caller speech (VAD closed the turn) -> first bot frame handed to the sender.
    response_latencies_ms: list[float] = field(default_factory=list)
    # Caller's speech onset (first voiced frame) -> bot audio cut, on the media timeline.
    barge_in_stop_ms: list[float] = field(default_factory=list)


@dataclass
class _Dtmf:
    digit: str


@dataclass
class _Pause:
    utterance: Utterance


class _Wake:
    """Makes the session loop re-read the no-input deadline."""


class BotSession:
    """The :class:`~gateway.pipeline.bot.CallControl` a bot acts through, and its loop."""

    def __init__(self, call: Call, bot: Bot, tts: TTS, vad: VadConfig | None = None) -> None:
        self.call = call
        self.bot = bot
        self.tts = tts
        self.settings = ListenSettings()
        self.metrics = SessionMetrics()
        self._segmenter = VadSegmenter(vad or VadConfig())
        voice_gate = "on" if self._segmenter.config.voice_gate else "off"
        log.info("call %s: turn-taking with the VAD voice gate %s", call.id, voice_gate)
        self._inbox: asyncio.Queue[Utterance | _Dtmf | Interruption | _Pause | _Wake] = (
            asyncio.Queue()
        )
        # Only bots that define on_pause get pauses (and pay for the copy of the audio).
        self._on_pause = getattr(bot, "on_pause", None)
        self._pause_ms = PAUSE_MS if self._on_pause is not None else 0
        # What the media path calls with each frame: the segmenter's compiled listener
        # (the VAD step in C, Python only at its actions, see _on_step) while nothing
        # needs every frame; it calls _on_frame otherwise, and None: _on_frame itself.
        self._listener = self._segmenter.frame_listener(self._on_step, self._on_frame)
        # The prompt playing now, and the one a speech onset paused (see _rewire).
        self._barge = BargeIn(
            call,
            self._segmenter,
            self.metrics,
            interrupted=self._inbox.put_nowait,
            # Weak: the session and its barge-in are no cycle (freed when the call ends).
            held_changed=weakref.WeakMethod(self._rewire),
        )
        self._rewire()
        # Closes a turn whose frames stopped (armed while a turn is open).
        self._stall = TurnStallCheck(self._segmenter)
        self._turn_ended_at: float | None = None
        self._input_deadline: float | None = None
        rec = call.record
        self._info = CallInfo(
            call_id=call.id,
            direction=rec.direction,
            caller=rec.peer,
            caller_name=rec.contact_name,
            biz_opaque_callback_data=rec.biz_opaque_callback_data,
        )

    # --- CallControl ---------------------------------------------------------------

    @property
    def info(self) -> CallInfo:
        """Call metadata."""
        return self._info

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """The call record's conversation log (JSON-ready turns; ``GET /calls/{id}``)."""
        return self.call.record.conversation

    async def say(self, text: str, *, interruptible: bool = True) -> PlaybackResult:
        """Synthesize ``text`` (off the loop, cached) and play it."""
        chunks = [as_samples(chunk) async for chunk in self.tts.synthesize(text)]
        # One chunk (eSpeak's whole prompt) is played as it is; several are joined (a memcpy each).
        pcm = chunks[0] if len(chunks) == 1 else as_samples(b"".join(chunks))
        return await self.play(pcm, interruptible=interruptible, label=text)

    async def play(
        self, audio: AudioBuffer | str | Path, *, interruptible: bool = True, label: str = ""
    ) -> PlaybackResult:
        """Play PCM (any int16 buffer, see :meth:`CallControl.play`) or a WAV file; returns
        when it finished or was cut off."""
        if isinstance(audio, str | Path):
            label = label or str(audio)
            audio = await asyncio.get_running_loop().run_in_executor(None, load_wav, audio)
        pcm = as_samples(audio, convert=True)
        if len(pcm) == 0:
            return PlaybackResult(0, 0, False)
        seconds = len(pcm) / SAMPLE_RATE
        log.info("call %s: bot plays %s (%.2f s)", self.call.id, label or "audio", seconds)
        playback = self.call.playout.play(pcm)
        barge = self._barge
        barge.current = (playback, label, interruptible)
        try:
            await playback.wait()
        finally:
            if barge.current is not None and barge.current[0] is playback:
                barge.current = None
        return PlaybackResult(
            playback.frames_sent, playback.frames, playback.interrupted, tuple(playback.pauses)
        )

    def listen(
        self,
        *,
        enabled: bool = True,
        barge_in: bool = True,
        resume_false_interruptions: bool = True,
    ) -> None:
        """Turn listening, barge-in and resuming after a false interruption on or off."""
        self.settings = self._barge.settings = ListenSettings(
            enabled=enabled,
            barge_in=barge_in,
            resume_false_interruptions=resume_false_interruptions,
        )
        self._stall.listening = enabled
        if not enabled:
            self._segmenter.reset()
            self._stall.cancel()
        if not (enabled and barge_in):
            # Nobody will decide about the sound any more: the prompt goes on.
            self._barge.let_go("listening changed")
        self._rewire()

    def expect_input(self, within: float | None) -> None:
        """Arm (or with None, disarm) the no-input timeout."""
        loop = asyncio.get_running_loop()
        self._input_deadline = None if within is None else loop.time() + within
        self._inbox.put_nowait(_Wake())  # the loop may be waiting without a deadline

    async def hangup(self, reason: str = "bot hung up") -> None:
        """Terminate the call through the Cloud API, then close it."""
        log.info("call %s: bot hangs up (%s)", self.call.id, reason)
        # Let the last words leave before the media path closes.
        current = self._barge.current
        if current is not None:
            await current[0].wait()
        # Closing cancels this session task; shield so the close itself completes.
        await asyncio.shield(self.call.end(reason, terminate=True))

    # --- media callbacks (in-loop, per frame) -------------------------------------------

    def _rewire(self) -> None:
        """Tell the compiled listener whether only the VAD's actions need Python."""
        if self._listener is not None:
            self._listener.plain = (
                self.settings.enabled and not self._pause_ms and self._barge.held is None
            )

    def _on_frame(self, frame: AudioBuffer) -> None:
        # Every frame, where the compiled listener does not take it (see __init__):
        # one Python call around the compiled VAD step (the segmenter's push, apart:
        # see VadSegmenter.step). Most frames cause no action, and then there is only
        # work while a bot takes pauses or a prompt is held for a sound.
        if not self.settings.enabled:
            return
        segmenter = self._segmenter
        try:
            action = segmenter.step(frame)
        except ValueError:
            raise segmenter.frame_error(frame) from None
        if action or self._pause_ms or self._barge.held is not None:
            self._on_step(action, frame)

    def _on_step(self, action: int, frame: AudioBuffer) -> None:
        """A frame with a VAD action, or any frame while pauses or a held prompt are
        watched (from _on_frame, or from the compiled listener: there with an action only)."""
        segmenter = self._segmenter
        self._on_vad_events(segmenter.events(action, frame))
        # A turn opens (in_speech turns true) only at a frame with an action.
        if action and not self._stall.watched and segmenter.in_speech:
            self._stall.arm(self._close_stalled_turn)

    def _on_vad_events(self, events: list[VadEvent]) -> None:
        barge = self._barge
        for event in events:
            if isinstance(event, SpeechStarted):
                if barge.speech_started():
                    onset_ms = self._segmenter.frames_seen * 20 - event.at_ms
                    self.metrics.barge_in_stop_ms.append(float(onset_ms))
            elif isinstance(event, SpeechEnded):
                if barge.held is not None:
                    barge.barge_in("speech")  # told before the utterance itself
                self.metrics.utterances += 1
                log.info(
                    "call %s: caller turn %d ended (%.2f s of speech)",
                    self.call.id,
                    self.metrics.utterances,
                    len(event.audio) / SAMPLE_RATE,
                )
                self._turn_ended_at = time.perf_counter()
                # Told of frames sent only until the first of the answer leaves.
                self.call.playout.on_frame_sent = self._on_frame_sent
                self._inbox.put_nowait(Utterance(event.audio, event.started_at_ms, event.at_ms))
            else:  # SpeechDiscarded
                barge.let_go("the sound was discarded")
        if self._pause_ms and self._segmenter.turn_silence_ms == self._pause_ms:
            turn = self._segmenter.peek()
            if turn is not None:
                self._inbox.put_nowait(
                    _Pause(Utterance(turn.audio, turn.started_at_ms, turn.at_ms))
                )
        if barge.held is not None:
            barge.decide()

    # --- a caller whose packets stop mid-turn ------------------------------------------

    def _close_stalled_turn(self) -> None:
        # The caller's packets stopped mid-turn (see TurnStallCheck): the turn ends here.
        hangover_ms = self._segmenter.config.hangover_ms
        log.info(
            "call %s: no caller audio for %d ms, closing the open turn", self.call.id, hangover_ms
        )
        self._on_vad_events(self._segmenter.flush())

    # --- keys, and the answer's first frame --------------------------------------------

    def _on_dtmf(self, digit: str, duration_ms: int) -> None:
        # A key press cuts the prompt short, as on any IVR ("type-ahead").
        self._barge.barge_in(f"key {digit}")
        self._inbox.put_nowait(_Dtmf(digit))

    def _on_frame_sent(self, pts: int, is_speech: bool) -> None:
        if is_speech and self._turn_ended_at is not None:
            self.metrics.response_latencies_ms.append(
                (time.perf_counter() - self._turn_ended_at) * 1000
            )
            self._turn_ended_at = None
            self.call.playout.on_frame_sent = None  # no call per frame until the next turn

    # --- the session loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Feed the bot until the call ends (this is the call's session task)."""
        call = self.call
        # Equal to self._on_frame (what it stands for), so found and removed by it too.
        call.add_frame_listener(self._listener or self._on_frame)
        call.dtmf_listeners.append(self._on_dtmf)
        call.end_hooks.append(self._on_call_end)
        try:
            await self.bot.on_start(self)
            while True:
                deadline = self._input_deadline
                if deadline is None:
                    item = await self._inbox.get()
                else:
                    # Not wait_for: Python 3.11's drops a cancel that lands as the item
                    # comes, and the session would outlive its call.
                    try:
                        async with asyncio.timeout_at(deadline):
                            item = await self._inbox.get()
                    except TimeoutError:
                        self._input_deadline = None
                        await self.bot.on_timeout(self)
                        continue
                if isinstance(item, _Wake):
                    continue
                if not isinstance(item, Interruption):
                    self._input_deadline = None
                if isinstance(item, _Pause):
                    if self._on_pause is not None:
                        await self._on_pause(self, item.utterance)
                elif isinstance(item, Utterance):
                    await self.bot.on_utterance(self, item)
                elif isinstance(item, _Dtmf):
                    await self.bot.on_dtmf(self, item.digit)
                else:
                    await self.bot.on_barge_in(self, item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A broken bot ends its own call cleanly and nothing else.
            log.exception("call %s: bot %s raised", call.id, type(self.bot).__name__)
            call.end(f"bot error: {exc!r}", terminate=True)

    async def _on_call_end(self) -> None:
        self._stall.cancel()
        try:
            async with asyncio.timeout(HANGUP_GRACE):
                await self.bot.on_hangup(self)
        except Exception:
            log.exception("call %s: on_hangup failed", self.call.id)
        finally:
            # The compiled listener holds this session's methods: let go of it here
            # (the call lets go of its listeners as it ends) so the session and the
            # call are freed at once, not at the next full garbage collection. Frames
            # until the media path closes still reach it through the call.
            self._segmenter.drop_frame_listener()
            self._listener = None


def session_factory(
    make_bot: Callable[[], Bot], tts: TTS, vad: VadConfig | None = None
) -> SessionFactory:
    """A :data:`gateway.call.SessionFactory` running a fresh bot on each call."""

    async def run(call: Call) -> None:
        session = BotSession(call, make_bot(), tts, vad)
        call.session = session
        await session.run()

    return run
