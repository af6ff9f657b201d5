"""Runs one bot on one call: VAD turn-taking, barge-in, TTS and playout.

The per-frame path is synchronous and in-loop: each decoded 20 ms frame goes
through the VAD segmenter inside the media callback; only whole utterances and
DTMF digits are queued to the bot, whose handlers run one at a time in the
call's session task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..call import Call, SessionFactory
from ..media.audio import load_wav
from ..media.pcm import SAMPLE_RATE, AudioBuffer, as_samples
from ..media.playout import Playback
from .bot import (
    Bot,
    CallInfo,
    Interruption,
    ListenSettings,
    PlaybackResult,
    Utterance,
)
from .stall import STALL_CHECK_S, StallWatch, stall_watch
from .tts import TTS
from .vad import SpeechEnded, SpeechStarted, VadConfig, VadEvent, VadSegmenter

log = logging.getLogger(__name__)

# How long a bot's on_hangup may take before it is abandoned.
HANGUP_GRACE = 2.0

# Silence inside a turn after which a bot with ``on_pause`` gets the speech so far
# (well before the VAD hangover closes the turn), e.g. to transcribe speculatively.
PAUSE_MS = 200

# Unvoiced audio after a sound, still too short for an utterance, that resumes a
# paused prompt. WebRTC's VAD often marks a frame or two after a sound as voiced,
# and the resumed audio takes a frame to leave: the caller hears the prompt again
# about 200-250 ms after the sound ended (the goal is within 300 ms).
RESUME_AFTER_MS = 160


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
        self._current: tuple[Playback, str, bool] | None = None
        # What the media path calls with each frame: the segmenter's compiled listener
        # (the VAD step in C, Python only at its actions, see _on_step) while nothing
        # needs every frame; it calls _on_frame otherwise, and None: _on_frame itself.
        self._listener = self._segmenter.frame_listener(self._on_step, self._on_frame)
        # The playback a speech onset paused, held until the caller's turn is decided.
        self._held = None
        # Closes a turn whose frames stopped (see _check_stall); watched while a turn is open.
        self._stall_watch: StallWatch | None = None
        self._stall_watched = False
        self._stall_seen = 0
        self._stall_since = 0.0
        self._stall_tick_at = 0.0
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
        self._current = (playback, label, interruptible)
        try:
            await playback.wait()
        finally:
            if self._current is not None and self._current[0] is playback:
                self._current = None
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
        self.settings = ListenSettings(
            enabled=enabled,
            barge_in=barge_in,
            resume_false_interruptions=resume_false_interruptions,
        )
        if not enabled:
            self._segmenter.reset()
            self._cancel_stall_check()
        if self._held is not None and not (enabled and barge_in):
            # Nobody will decide about the sound any more: the prompt goes on.
            self._resume("listening changed")
            self._held = None
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
        if self._current is not None:
            await self._current[0].wait()
        # Closing cancels this session task; shield so the close itself completes.
        await asyncio.shield(self.call.end(reason, terminate=True))

    # --- media callbacks (in-loop, per frame) -------------------------------------------

    @property
    def _held(self) -> Playback | None:
        """The playback a speech onset paused, until the caller's turn is decided."""
        return self._held_playback

    @_held.setter
    def _held(self, playback: Playback | None) -> None:
        self._held_playback = playback
        self._rewire()

    def _rewire(self) -> None:
        """Tell the compiled listener whether only the VAD's actions need Python."""
        if self._listener is not None:
            self._listener.plain = (
                self.settings.enabled and not self._pause_ms and self._held_playback is None
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
        if action or self._pause_ms or self._held is not None:
            self._on_step(action, frame)

    def _on_step(self, action: int, frame: AudioBuffer) -> None:
        """A frame with a VAD action, or any frame while pauses or a held prompt are
        watched (from _on_frame, or from the compiled listener: there with an action only)."""
        segmenter = self._segmenter
        self._on_vad_events(segmenter.events(action, frame))
        # A turn opens (in_speech turns true) only at a frame with an action.
        if action and not self._stall_watched and segmenter.in_speech:
            self._arm_stall_check()

    def _on_vad_events(self, events: list[VadEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                if self._on_speech_started():
                    onset_ms = self._segmenter.frames_seen * 20 - event.at_ms
                    self.metrics.barge_in_stop_ms.append(float(onset_ms))
            elif isinstance(event, SpeechEnded):
                if self._held is not None:
                    self._barge_in("speech")  # told before the utterance itself
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
            elif self._held is not None:  # SpeechDiscarded
                self._resume("the sound was discarded")
                self._held = None
        if self._pause_ms and self._segmenter.turn_silence_ms == self._pause_ms:
            turn = self._segmenter.peek()
            if turn is not None:
                self._inbox.put_nowait(
                    _Pause(Utterance(turn.audio, turn.started_at_ms, turn.at_ms))
                )
        if self._held is not None:
            self._decide_paused()

    # --- a caller whose packets stop mid-turn ------------------------------------------

    def _arm_stall_check(self) -> None:
        loop = asyncio.get_running_loop()
        self._stall_seen = self._segmenter.frames_seen
        self._stall_since = self._stall_tick_at = loop.time()
        self._stall_watch = stall_watch(loop)
        self._stall_watch.watch(self._check_stall)
        self._stall_watched = True

    def _check_stall(self, now: float) -> None:
        """Close an open turn on the wall clock once no frame came for the hangover.

        The segmenter's hangover counts frames; when the caller's packets stop
        (a network drop, a client that stops sending in silence) none come, and
        the turn would stay open forever. No per-frame cost: the loop's
        :class:`~gateway.pipeline.stall.StallWatch` calls this every 100 ms
        while a turn is open.
        """
        segmenter = self._segmenter
        if not segmenter.in_speech or not self.settings.enabled:
            self._cancel_stall_check()
            return
        late = now - self._stall_tick_at - STALL_CHECK_S
        self._stall_tick_at = now
        if segmenter.frames_seen != self._stall_seen:
            self._stall_seen = segmenter.frames_seen
            self._stall_since = now
        elif late > STALL_CHECK_S:
            # The event loop itself stalled: packets may be waiting to be read, so
            # that time says nothing about the caller.
            self._stall_since += late
        elif now - self._stall_since >= segmenter.config.hangover_ms / 1000:
            log.info(
                "call %s: no caller audio for %d ms, closing the open turn",
                self.call.id,
                segmenter.config.hangover_ms,
            )
            self._cancel_stall_check()
            self._on_vad_events(segmenter.flush())

    def _cancel_stall_check(self) -> None:
        if self._stall_watched:
            self._stall_watched = False
            if self._stall_watch is not None:
                self._stall_watch.unwatch(self._check_stall)

    def _on_speech_started(self) -> bool:
        """Stop the bot's interruptible speech at a speech onset; True if it did."""
        if not self.settings.resume_false_interruptions:
            return self._barge_in("speech")
        playback = self._interruptible()
        if playback is None:
            return False
        # Silence at once, as a barge-in would; whether to drop the rest waits
        # until the sound is long enough to be a turn, or ends short of it.
        self.call.playout.pause()
        self._held = playback
        log.info("call %s: playout paused at speech onset", self.call.id)
        return True

    def _decide_paused(self) -> None:
        held = self._held
        if held is None:
            return
        playout = self.call.playout
        if held.done.done():
            self._held = None  # flushed meanwhile (a key, the call ending)
        elif self._segmenter.turn_is_utterance:
            self._barge_in("speech")
        elif playout.paused:
            if self._segmenter.turn_silence_ms >= RESUME_AFTER_MS:
                self._resume(f"a {self._segmenter.turn_voiced_ms} ms sound, not speech so far")
        elif self._segmenter.turn_silence_ms == 0:
            # More sound in the same turn: hold the prompt again until it is decided.
            playout.pause()

    def _resume(self, why: str) -> None:
        """Let the held prompt go on; it stays held until the caller's turn is decided."""
        held = self._held
        if held is None or not self.call.playout.paused:
            return
        self.call.playout.resume()
        self.metrics.false_interruptions += 1
        pause_frames = held.pauses[-1][1] if held.pauses else 0
        log.info("call %s: playout resumed after %d ms (%s)", self.call.id, pause_frames * 20, why)

    def _interruptible(self) -> Playback | None:
        current = self._current
        if current is None or not self.settings.barge_in:
            return None
        playback, _label, interruptible = current
        if not interruptible or playback.done.done():
            return None
        return playback

    def _barge_in(self, cause: str) -> bool:
        """Cut the bot's interruptible speech; True if it did."""
        self._held = None
        playback = self._interruptible()
        if playback is None:
            self.call.playout.resume()  # a pause must never outlive its decision
            return False
        assert self._current is not None
        label = self._current[1]
        dropped = self.call.playout.flush()
        self.metrics.barge_ins += 1
        log.info("call %s: barge-in by %s, %d frames dropped", self.call.id, cause, dropped)
        self._inbox.put_nowait(Interruption(label, playback.frames_sent, dropped))
        return True

    def _on_dtmf(self, digit: str, duration_ms: int) -> None:
        # A key press cuts the prompt short, as on any IVR ("type-ahead").
        self._barge_in(f"key {digit}")
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
            loop = asyncio.get_running_loop()
            while True:
                deadline = self._input_deadline
                if deadline is None:
                    item = await self._inbox.get()
                else:
                    try:
                        item = await asyncio.wait_for(
                            self._inbox.get(), max(0.0, deadline - loop.time())
                        )
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
        self._cancel_stall_check()
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
