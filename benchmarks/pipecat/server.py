"""The yardstick: Pipecat 1.14's WhatsApp transport running an echo bot, behind the sandbox.

Run with the Pipecat virtualenv's python (``make pipecat-env``), by
benchmarks/cpu_per_call.py ``--pipecat``, configured by the environment the load
tester gives every server (WHATSAPP_*, GATEWAY_PORT).

Wired as Pipecat's own development runner wires ``--whatsapp`` (pipecat/runner/run.py):
the signed ``calls`` webhook is parsed into Pipecat's ``WhatsAppWebhookRequest`` and
handed to ``WhatsAppClient.handle_webhook_request`` (signature check, SDP answer,
``pre_accept`` and ``accept`` on the Graph API, terminate), and each new
``SmallWebRTCConnection`` gets a bot of its own: a ``SmallWebRTCTransport``, a pipeline,
a ``PipelineWorker`` and a ``WorkerRunner``, cancelled when the client disconnects.
What differs from the runner, none of it per packet: aiohttp instead of FastAPI for
the four HTTP routes; the Graph API's ``BASE_URL`` is the sandbox's (a class attribute
Pipecat reads when it builds its API client); no STUN server (no internet here: the
runner's default is Google's); ICE host candidates on 127.0.0.1 only, as for the
stock echo (the sandbox's callers are on loopback); logs at WARNING (or LOGURU_LEVEL),
as the gateway's.

The bot (PIPECAT_ECHO): ``utterance`` (default) is the gateway's echo bot in Pipecat
terms: Pipecat's VADProcessor with its SileroVADAnalyzer (the VAD its examples use)
finds each utterance, which is played back when it ends, and the caller talking over
it interrupts it (barge-in); ``frames`` plays every input frame straight back (no VAD).

Serves /metrics (process CPU, RSS, calls, call-seconds) like the gateway, so the load
tester reads the same figures from it (benchmarks/baseline_server.py: ``benchmarks/``
must be on PYTHONPATH, as cpu_per_call.py sets it).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import deque

import aiohttp
import aioice.ice
from aiohttp import web
from baseline_server import serve
from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.transports.whatsapp.api import (
    WhatsAppApi,
    WhatsAppConnectCall,
    WhatsAppTerminateCallValue,
    WhatsAppWebhookRequest,
)
from pipecat.transports.whatsapp.client import WhatsAppClient
from pipecat.workers.runner import WorkerRunner
from pydantic import ValidationError

SAMPLE_RATE = 16000  # the gateway's pipeline rate, and one Silero takes
PREROLL_FRAMES = 15  # 300 ms kept before the VAD's start (its start_secs is 0.2 s)


class UtteranceEcho(FrameProcessor):
    """Plays each utterance back when the VAD says it ended; barge-in interrupts it."""

    def __init__(self) -> None:
        super().__init__()
        self._speaking = False
        self._preroll: deque[bytes] = deque(maxlen=PREROLL_FRAMES)
        self._utterance = bytearray()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            if self._speaking:
                self._utterance += frame.audio
            else:
                self._preroll.append(frame.audio)
            return  # the caller's audio is the echo's to play, not the output's
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._speaking = True
            self._utterance = bytearray(b"".join(self._preroll))
            self._preroll.clear()
            await self.broadcast_interruption()  # the output drops what it still plays
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speaking = False
            audio, self._utterance = bytes(self._utterance), bytearray()
            await self.push_frame(
                OutputAudioRawFrame(audio=audio, sample_rate=SAMPLE_RATE, num_channels=1)
            )
        await self.push_frame(frame, direction)


class FrameEcho(FrameProcessor):
    """Plays every input frame straight back."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            frame = OutputAudioRawFrame(
                audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels
            )
        await self.push_frame(frame, direction)


async def run_bot(connection: SmallWebRTCConnection, echo: str) -> None:
    """One call's bot, as a Pipecat bot file's ``bot()`` builds it."""
    transport = SmallWebRTCTransport(
        webrtc_connection=connection,
        params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
    )
    if echo == "utterance":
        steps = [VADProcessor(vad_analyzer=SileroVADAnalyzer()), UtteranceEcho()]
    else:
        steps = [FrameEcho()]
    worker = PipelineWorker(
        Pipeline([transport.input(), *steps, transport.output()]),
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport: SmallWebRTCTransport, client: object) -> None:
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


class PipecatEcho:
    """The webhook routes of Pipecat's runner, plus /metrics."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        env = os.environ
        self.verify_token = env["WHATSAPP_VERIFY_TOKEN"]
        self.echo = env.get("PIPECAT_ECHO", "utterance")
        if self.echo not in ("utterance", "frames"):
            raise SystemExit(f"PIPECAT_ECHO must be utterance or frames, not {self.echo!r}")
        self.client = WhatsAppClient(
            whatsapp_token=env["WHATSAPP_ACCESS_TOKEN"],
            phone_number_id=env["WHATSAPP_PHONE_NUMBER_ID"],
            session=session,
            ice_servers=[],
            whatsapp_secret=env["WHATSAPP_APP_SECRET"],
        )
        self.started: dict[str, float] = {}  # call id -> when its bot started
        self.ended_seconds = 0.0
        self.bots: set[asyncio.Task[None]] = set()

    async def verify(self, request: web.Request) -> web.Response:
        try:
            challenge = await self.client.handle_verify_webhook_request(
                dict(request.query), self.verify_token
            )
        except ValueError:
            return web.Response(status=403, text="Verification failed")
        return web.Response(text=str(challenge))

    async def webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = WhatsAppWebhookRequest.model_validate_json(raw)
        except ValidationError as exc:  # FastAPI's answer to a body its model refuses
            return web.json_response({"detail": exc.errors(include_url=False)}, status=422)
        if body.object != "whatsapp_business_account":
            return web.json_response({"detail": "Invalid object type"}, status=400)
        for entry in body.entry:
            for change in entry.changes:
                if isinstance(change.value, WhatsAppTerminateCallValue):
                    for call in change.value.calls:
                        if call.id in self.started:
                            self.ended_seconds += time.time() - self.started.pop(call.id)
        try:
            await self.client.handle_webhook_request(
                body,
                self.on_connection,
                raw_body=raw,
                sha256_signature=request.headers.get("X-Hub-Signature-256"),
            )
        except ValueError as exc:
            return web.json_response({"detail": f"Invalid request: {exc}"}, status=400)
        except Exception:
            return web.json_response({"detail": "Internal server error"}, status=500)
        return web.json_response({"status": "success"})

    async def on_connection(
        self, connection: SmallWebRTCConnection, call: WhatsAppConnectCall
    ) -> None:
        self.started[call.id] = time.time()
        task = asyncio.create_task(run_bot(connection, self.echo))
        self.bots.add(task)
        task.add_done_callback(self.bots.discard)

    def calls(self) -> tuple[int, float]:
        """Calls up, and call-seconds so far (for /metrics)."""
        now = time.time()
        return len(self.started), self.ended_seconds + sum(now - t for t in self.started.values())

    async def end_calls(self) -> None:
        await self.client.terminate_all_calls()
        for task in list(self.bots):
            task.cancel()
        await asyncio.gather(*self.bots, return_exceptions=True)


def loopback_candidates() -> None:
    """ICE host candidates on 127.0.0.1 only (aioice skips loopback by default)."""

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = get_host_addresses


async def main() -> None:
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("LOGURU_LEVEL", "WARNING"))
    loopback_candidates()
    WhatsAppApi.BASE_URL = os.environ["WHATSAPP_GRAPH_URL"].rstrip("/") + "/"
    async with aiohttp.ClientSession() as session:
        echo = PipecatEcho(session)
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_get("/webhook", echo.verify)
        app.router.add_post("/webhook", echo.webhook)
        await serve(app, echo.calls, echo.end_calls)


if __name__ == "__main__":
    asyncio.run(main())
