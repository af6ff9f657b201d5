"""Raw aiortc peers over loopback for the media tests."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection


async def connected(pc: RTCPeerConnection) -> None:
    """Wait (at most 20 s) until ``pc`` is connected; fail if it fails or closes."""
    done = asyncio.Event()

    @pc.on("connectionstatechange")
    def _changed() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            done.set()

    if pc.connectionState != "connected":
        await asyncio.wait_for(done.wait(), 20)
    assert pc.connectionState == "connected"
