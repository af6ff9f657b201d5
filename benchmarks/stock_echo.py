"""The baseline: a stock aiortc echo behind the same WhatsApp signaling.

Webhooks, Graph actions and SDP fixes are the gateway's own (they are not the
hot path); the media is what a straightforward aiortc app does: the remote
track (decoded in aiortc's decoder thread, 48 kHz stereo) is added back as the
outgoing track (re-encoded by aiortc's encoder in an executor thread). No
pipeline, no VAD. Serves /metrics like the gateway, so the load tester can read
its CPU per call-second.

Run by benchmarks/cpu_per_call.py; configured by the same environment variables.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from baseline_server import serve

from gateway import sdp
from gateway.events import CallConnect, CallTerminate, Event
from gateway.graph import GraphClient
from gateway.media.ice import use_host_addresses
from gateway.webhooks import WebhookReceiver

log = logging.getLogger("stock_echo")


class StockEcho:
    def __init__(self) -> None:
        env = os.environ
        self.graph = GraphClient(
            base_url=env["WHATSAPP_GRAPH_URL"],
            access_token=env["WHATSAPP_ACCESS_TOKEN"],
            phone_number_id=env["WHATSAPP_PHONE_NUMBER_ID"],
        )
        self.pcs: dict[str, tuple[RTCPeerConnection, float]] = {}
        self.ended_seconds = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        self.webhooks = WebhookReceiver(
            app_secret=env["WHATSAPP_APP_SECRET"],
            verify_token=env["WHATSAPP_VERIFY_TOKEN"],
            sink=self.on_event,
        )

    async def on_event(self, event: Event) -> bool:
        """The receiver's sink: answer offers, close on terminate; every event is taken."""
        if isinstance(event, CallConnect) and event.sdp_type == "offer":
            task = asyncio.create_task(self.answer(event))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(event, CallTerminate) and event.call_id in self.pcs:
            pc, accepted = self.pcs.pop(event.call_id)
            self.ended_seconds += time.time() - accepted
            task = asyncio.create_task(pc.close())
            self.tasks.add(task)  # type: ignore[arg-type]
            task.add_done_callback(self.tasks.discard)  # type: ignore[arg-type]
        return True

    async def answer(self, event: CallConnect) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @pc.on("track")
        def on_track(track: object) -> None:
            pc.addTrack(track)  # echo: decoded frames straight back to the encoder

        await pc.setRemoteDescription(RTCSessionDescription(sdp=event.sdp, type="offer"))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        text = sdp.prepare_answer(pc.localDescription.sdp)
        await self.graph.pre_accept(event.call_id, text)
        await self.graph.accept(event.call_id, text)
        self.pcs[event.call_id] = (pc, time.time())

    def calls(self) -> tuple[int, float]:
        """Calls up, and call-seconds so far (for /metrics)."""
        now = time.time()
        return len(self.pcs), self.ended_seconds + sum(now - t for _, t in self.pcs.values())

    async def end_calls(self) -> None:
        for pc, _ in list(self.pcs.values()):
            await pc.close()
        await self.graph.aclose()


async def main() -> None:
    use_host_addresses(["127.0.0.1"])
    echo = StockEcho()
    app = web.Application(client_max_size=16 * 2**20)
    echo.webhooks.add_routes(app)
    await serve(app, echo.calls, echo.end_calls)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
