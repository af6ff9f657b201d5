"""What runs beside an answered call: the media watchdog and the bot session.

Both run as tasks the call owns, so they end with it.
"""

from __future__ import annotations

import asyncio
import logging

from ..call import Call, SessionFactory
from ..errors import GatewayError
from ..logsafe import clip
from ..media.frameclock import sleep_on_grid

__all__ = ["run_session", "watch_media"]

# The calls' logger keeps the name operators filter on, whichever module logs.
log = logging.getLogger("gateway.calls")


async def watch_media(call: Call, media_timeout: float, media_idle_timeout: float) -> None:
    """End an answered call whose media never comes up, or stops coming in.

    WhatsApp's offers carry no end-of-candidates, so ICE that never connects
    never "fails"; and RTP can stop while ICE consent still passes. The check
    is a counter read every few seconds: nothing is added per packet.
    """
    try:
        async with asyncio.timeout(media_timeout):
            await call.media_up.wait()
    except TimeoutError:
        log.warning("call %s: media not up %.0f s after answer", call.id, media_timeout)
        call.end(f"no media within {media_timeout:.0f} s of answer", terminate=True)
        return
    loop = asyncio.get_running_loop()
    period = min(5.0, media_idle_timeout / 4)
    seen, since = call.packets_received, loop.time()
    while True:
        await sleep_on_grid(period)  # with the tick's wake-up, not one of its own
        count = call.packets_received
        if count != seen:
            seen, since = count, loop.time()
        elif loop.time() - since >= media_idle_timeout:
            idle = loop.time() - since
            log.warning("call %s: no inbound RTP for %.1f s", call.id, idle)
            call.end(f"no inbound media for {idle:.0f} s", terminate=True)
            return


async def run_session(call: Call, factory: SessionFactory) -> None:
    """Run the bot session on ``call``; a GatewayError from it ends the call."""
    try:
        await factory(call)
    except GatewayError as exc:
        log.warning("call %s: session ended with error: %s", call.id, clip(exc))
        call.end(f"session error: {clip(exc.message)}", terminate=True)
