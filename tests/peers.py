"""Raw aiortc peers over loopback for the media tests."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver

from gateway.media.inbound import InboundAudio
from gateway.media.playout import PlayoutTrack
from gateway.media.reports import ReportingReceiver
from gateway.media.sender import PlayoutSender
from gateway.media.transport import CallTransport


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


@dataclass
class GatewaySide:
    """A raw peer connection set up as the gateway sets up a call's."""

    sender: PlayoutSender
    receiver: ReportingReceiver
    transport: CallTransport
    inbound: InboundAudio
    frames: list[object] = field(default_factory=list)
    """What ``inbound`` decoded."""


async def answer_as_gateway(caller: RTCPeerConnection, gateway: RTCPeerConnection) -> GatewaySide:
    """Apply ``caller``'s offer (made here) to ``gateway`` with the gateway's objects
    (PlayoutSender, ReportingReceiver, CallTransport; InboundAudio on the negotiated Opus
    payload type) and set its answer, which is not yet given to the caller."""
    await caller.setLocalDescription(await caller.createOffer())
    await gateway.setRemoteDescription(caller.localDescription)
    transceiver = gateway.getTransceivers()[0]
    transceiver.sender.replaceTrack(PlayoutTrack())
    sender = PlayoutSender.adopt(transceiver.sender)
    receiver = ReportingReceiver.adopt(transceiver.receiver)
    transport = CallTransport.adopt(receiver.transport)
    transceiver.direction = "sendrecv"
    frames: list[object] = []
    inbound = await answer_with_inbound(gateway, receiver, frames)
    return GatewaySide(sender, receiver, transport, inbound, frames)


async def answer_with_inbound(
    gateway: RTCPeerConnection, receiver: RTCRtpReceiver, frames: list[Any]
) -> InboundAudio:
    """InboundAudio on ``receiver`` (its frames appended to ``frames``), attached before
    ``gateway`` sets its answer, then on the answer's Opus payload type."""
    inbound = InboundAudio(receiver, frames.append)
    inbound.attach()
    await gateway.setLocalDescription(await gateway.createAnswer())
    opus_pt = re.search(r"a=rtpmap:(\d+) opus/48000/2", gateway.localDescription.sdp)
    assert opus_pt is not None
    inbound.opus_pt = int(opus_pt.group(1))
    return inbound
