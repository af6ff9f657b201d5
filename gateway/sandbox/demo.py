"""``gateway sandbox``: a whole call, gateway and WhatsApp side, on this machine.

Starts the fake Graph API and a gateway pointed at it, then a simulated user
calls, speaks a recording, listens to the bot, optionally presses keys, and
hangs up. Prints a timeline of everything both sides did.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from pathlib import Path

import numpy as np

from ..media.audio import SAMPLE_RATE, load_wav, save_wav
from ..pipeline.plugins import default_tts, session_for
from .cloud import CloudAPISandbox
from .llm import model_for_bot
from .phone import BrowserPhone, PhoneSandbox
from .stack import start_local_stack
from .timeline import GATEWAY_LOGGERS, TimelineLogHandler
from .user import SimulatedUser

DEFAULT_AUDIO = Path("../shared/audio/goforward.wav")
DEFAULT_SENTENCE = "Hello, I would like to go forward ten meters."


async def _caller_audio(audio: str | None) -> tuple[np.ndarray, str]:
    loop = asyncio.get_running_loop()
    path = audio or (str(DEFAULT_AUDIO) if DEFAULT_AUDIO.is_file() else None)  # noqa: ASYNC240
    if path:
        return await loop.run_in_executor(None, load_wav, path), path
    chunks = [c async for c in default_tts().synthesize(DEFAULT_SENTENCE)]
    return np.concatenate(chunks), f"synthesized: {DEFAULT_SENTENCE!r}"


async def run_demo(
    *, bot: str = "echo", audio: str | None = None, record: str | None = None, digits: str = ""
) -> int:
    """Run the demo call; returns the process exit code.

    An agent bot talks to the scripted sandbox model unless ``GATEWAY_LLM_URL`` is set.
    """
    async with model_for_bot(bot) as model:
        if model is not None:
            print(f"the agent talks to the scripted sandbox model at {model.url}")
        return await _run_demo(bot=bot, audio=audio, record=record, digits=digits)


async def _run_demo(*, bot: str, audio: str | None, record: str | None, digits: str) -> int:
    sandbox = CloudAPISandbox(
        webhook_url="", app_secret=secrets.token_hex(16), access_token=secrets.token_hex(16)
    )
    sandbox.timeline.echo = print
    handler = TimelineLogHandler(sandbox.timeline, asyncio.get_running_loop())
    for name in GATEWAY_LOGGERS:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
    stack = await start_local_stack(sandbox, bot=bot, session=session_for(bot))
    gateway = stack.gateway
    try:
        pcm, source = await _caller_audio(audio)
        print(f"gateway on {gateway.url}, fake Graph API on {sandbox.graph_url}, bot {bot!r}")
        print(f"the caller will say: {source} ({len(pcm) / SAMPLE_RATE:.2f} s)\n")
        user = SimulatedUser(sandbox, "15551234567", "Ana")
        call = await user.place_call()
        async with asyncio.timeout(20):
            await call.accepted.wait()
            await call.media_up.wait()
        await asyncio.sleep(0.3)
        await call.play(pcm).wait()
        # Listen for the bot's answer: speech plus the VAD hangover plus playback (and, for
        # an agent, transcription and the model).
        await _wait(call.ended, len(pcm) / SAMPLE_RATE + 6.0)
        if digits and not call.ended.is_set():
            await call.press(digits)
            await _wait(call.ended, 4.0)
        if not call.ended.is_set():
            await call.hang_up()
        async with asyncio.timeout(10):
            for live in list(gateway.calls.calls.values()):
                await live.ended.wait()
        heard = call.heard
        loud = int(np.count_nonzero(np.abs(heard) > 500))
        print()
        print(f"the caller heard {len(heard) / SAMPLE_RATE:.2f} s of audio ({loud} loud samples)")
        if record:
            Path(record).parent.mkdir(parents=True, exist_ok=True)
            save_wav(record, heard)
            print(f"what the caller heard is saved in {record}")
        graph = [r.action for r in sandbox.requests if r.action]
        print(f"Graph API requests the gateway made: {', '.join(graph)}")
        records = list(gateway.calls.history.values())
        for turn in records[-1].conversation if records else ():
            print(f"  conversation: {turn['role']}: {turn['text']}")
        if records:
            open_calls = len(gateway.calls.calls)
            print(f"call ended: {records[-1].end_reason}; calls still open: {open_calls}")
        return 0
    finally:
        await stack.aclose()
        for name in GATEWAY_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).propagate = True


async def _wait(event: asyncio.Event, seconds: float) -> None:
    # Wait for the event, or give up quietly after ``seconds``.
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass


async def serve_phone(*, bot: str = "echo", port: int = 8765) -> int:
    """Serve the browser phone and a gateway until Ctrl-C; returns the exit code."""
    # The page can pick any bot: the agent gets the scripted model unless one is set.
    async with model_for_bot("agent"):
        return await _serve_phone(bot=bot, port=port)


async def _serve_phone(*, bot: str, port: int) -> int:
    try:
        stack = await PhoneSandbox.start(bot=bot, port=port, echo=print)
    except OSError as exc:
        print(f"gateway: error: cannot serve the phone on 127.0.0.1:{port}: {exc.strerror or exc}")
        return 2
    # The timeline prints the gateway's call lines already.
    for name in BrowserPhone.GATEWAY_LOGGERS:
        logging.getLogger(name).propagate = False
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"gateway on {stack.gateway.url}, fake Graph API on {stack.sandbox.graph_url}")
        print(f"\n  Call your bot: open {stack.url}  (default bot {bot!r}; Ctrl-C stops)\n")
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await stack.aclose()
    return 0
