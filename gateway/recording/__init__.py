"""Call recordings (opt-in with ``GATEWAY_RECORDINGS_DIR``): one stereo Ogg Opus file per
call, caller on the left, bot on the right, served at ``GET /calls/{id}/recording``.

:class:`Recordings` is a call observer: when a call is answered it turns on the
packet taps of the call's media path (:mod:`.call`), and when the call ends it
writes the file in its own worker thread, off the event loop. There is no
decode or encode for a recording, on the per-frame path or after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from .call import CallRecording, RecordingResult

if TYPE_CHECKING:
    from ..call import Call

__all__ = ["CallRecording", "RecordingResult", "Recordings", "recording_name"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "audio/ogg; codecs=opus"


def recording_name(call_id: str) -> str:
    """A file name for ``call_id`` that is safe whatever the id contains."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", call_id)[:96].lstrip(".") or "call"
    if safe != call_id:
        safe += "-" + hashlib.sha256(call_id.encode()).hexdigest()[:8]
    return f"{safe}.ogg"


class Recordings:
    """Records every answered call into ``directory``."""

    def __init__(self, directory: Path, *, registry: CollectorRegistry | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recordings")
        self._live: dict[str, CallRecording] = {}
        self._writing: dict[str, asyncio.Future[RecordingResult]] = {}
        self.written = Counter(
            "gateway_recordings",
            "Call recordings finished, by outcome (written, failed)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("written", "failed"):
            self.written.labels(outcome)

    # --- CallObserver ----------------------------------------------------------------

    def call_started(self, call: Call) -> None:
        pass

    def call_refused(self, call_id: str, reason: str) -> None:
        pass

    def call_answered(self, call: Call) -> None:
        if call.inbound is None:
            return
        path = self.directory / recording_name(call.id)
        recording = CallRecording(call.id, path, loop_clock=asyncio.get_running_loop().time)
        call.inbound.tap = recording.caller
        call.playout.tap = recording.bot
        self._live[call.id] = recording
        call.record.recording = str(path)
        log.info("call %s: recording to %s", call.id, path)

    def call_ended(self, call: Call) -> None:
        recording = self._live.pop(call.id, None)
        if recording is None:
            return
        if call.inbound is not None:
            call.inbound.tap = None
        call.playout.tap = None
        recording.stop(call.playout.started_at)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, recording.write)
        self._writing[call.id] = future
        future.add_done_callback(lambda f: self._written(call.id, f))

    def _written(self, call_id: str, future: asyncio.Future[RecordingResult]) -> None:
        self._writing.pop(call_id, None)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.written.labels("failed").inc()
            log.error("call %s: writing the recording failed: %r", call_id, exc)
            return
        result = future.result()
        self.written.labels("written").inc()
        log.info(
            "call %s: recording written (%.1f s, %d caller and %d bot packets%s)",
            call_id,
            result.seconds,
            result.caller_packets,
            result.bot_packets,
            f", {result.skipped_packets} caller packets not of 20 ms left out"
            if result.skipped_packets
            else "",
        )

    # --- lifecycle and HTTP ------------------------------------------------------------

    def live(self, call_id: str) -> CallRecording | None:
        """The recording of a call still going, if it is being recorded."""
        return self._live.get(call_id)

    def writing(self, call_id: str) -> bool:
        """Whether this call's file is still being written (or its call still going)."""
        return call_id in self._writing or call_id in self._live

    async def wait(self, call_id: str) -> None:
        """Wait until this call's file is written (no-op if it is not being written)."""
        future = self._writing.get(call_id)
        if future is not None:
            await asyncio.shield(future)

    async def aclose(self) -> None:
        """Finish the files being written, then stop the worker thread."""
        await asyncio.gather(*self._writing.values(), return_exceptions=True)
        self._executor.shutdown(wait=True)

    def path_of(self, call_id: str) -> Path:
        """Where this call's recording is (or would be)."""
        return self.directory / recording_name(call_id)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /calls/{call_id}/recording`` (behind the API key): the Ogg Opus file."""
        call_id = request.match_info["call_id"]
        if self.writing(call_id):
            return web.json_response(
                {"error": {"message": f"the recording of {call_id} is not finished yet"}},
                status=409,
                headers={"Retry-After": "2"},
            )
        path = self.path_of(call_id)
        if not path.is_file():
            return web.json_response(
                {"error": {"message": f"no recording of call {call_id}"}}, status=404
            )
        return web.FileResponse(path, headers={"Content-Type": CONTENT_TYPE})
