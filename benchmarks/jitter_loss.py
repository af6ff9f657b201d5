"""Receive delay before and after one lost packet: aiortc's jitter buffer vs ours.

Two real aiortc peers over loopback. The sender plays recorded speech through
the gateway's PlayoutTrack and drops one RTP packet (before SRTP) at a chosen
point. The receiver is either stock aiortc (the remote track's recv(), i.e. its
jitter buffer and decoder thread) or the gateway's InboundAudio. For every
frame we know when its packet was sent, so delay = delivered - sent.

    python benchmarks/jitter_loss.py [--seconds 8] [--drop-at 150]
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import RTCSessionDescription

from gateway import rtc
from gateway.media.audio import load_wav
from gateway.media.inbound import InboundAudio
from gateway.media.playout import PlayoutTrack

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"


async def run(stock: bool, seconds: float, drop_at: int) -> dict[str, float]:
    rtc.configure(["127.0.0.1"])
    sender_pc, receiver_pc = rtc.new_peer_connection(), rtc.new_peer_connection()
    playout = PlayoutTrack()
    sender = sender_pc.addTrack(playout)
    sent_at: dict[int, float] = {}
    count = [0]
    delays: list[tuple[int, float]] = []  # (frame index, delay seconds)
    first_ts: list[int] = []

    def on_frame_ts(ts: int) -> None:
        if not first_ts:
            first_ts.append(ts)
        t = sent_at.get(ts)
        if t is not None:
            delays.append(((ts - first_ts[0]) // 960, time.perf_counter() - t))

    await sender_pc.setLocalDescription(await sender_pc.createOffer())
    consumer: list[asyncio.Task[Any]] = []
    if stock:

        @receiver_pc.on("track")
        def on_track(track: Any) -> None:
            async def consume() -> None:
                base: list[int] = []
                while True:
                    frame = await track.recv()
                    # aiortc re-bases timestamps to start at 0: map back via the first packet.
                    if not base:
                        base.append(frame.pts)
                    on_frame_ts(min(sent_at) + frame.pts - base[0] if sent_at else 0)

            consumer.append(asyncio.create_task(consume()))

    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    receiver = receiver_pc.getTransceivers()[0].receiver
    if not stock:
        frames = [0]

        def on_frame(pcm: np.ndarray) -> None:
            ts0 = min(sent_at)
            on_frame_ts(ts0 + frames[0] * 960)
            frames[0] += 1

        inbound = InboundAudio(receiver, on_frame=on_frame)
        inbound.attach()
    await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
    await sender_pc.setRemoteDescription(
        RTCSessionDescription(sdp=receiver_pc.localDescription.sdp, type="answer")
    )
    transport = sender.transport
    original: Callable[[bytes], Any] = transport._send_rtp

    async def send_rtp(data: bytes) -> None:
        if 192 <= data[1] <= 223:
            # RTCP (RFC 5761) takes the same path: its bytes 4-8 are an SSRC, not a
            # timestamp, and counted as one they broke the frame mapping in half the runs.
            await original(data)
            return
        ts = struct.unpack_from("!I", data, 4)[0]
        count[0] += 1
        if count[0] == drop_at:
            return  # the one lost packet
        sent_at.setdefault(ts, time.perf_counter())
        await original(data)

    transport._send_rtp = send_rtp
    speech = np.concatenate(
        [load_wav(AUDIO / n) for n in ("numbers.wav", "cards-005.wav", "forever-2.wav")]
    )
    while len(speech) < seconds * 16000:
        speech = np.concatenate([speech, speech])
    await playout.play(speech[: int(seconds * 16000)]).wait()
    await asyncio.sleep(0.5)
    for task in consumer:
        task.cancel()
    await sender_pc.close()
    await receiver_pc.close()
    before = [d for i, d in delays if 20 < i < drop_at - 5]
    after = [d for i, d in delays if i > drop_at + 25]
    return {
        "before_ms": _ms(before, 50),
        "after_ms": _ms(after, 50),
        "after_p99_ms": _ms(after, 99),
        "frames": len(delays),
        "frames_after": len(after),
    }


def _ms(delays: list[float], percentile: float) -> float:
    """A percentile of ``delays`` in ms; NaN when no frame came (a receiver that stalled)."""
    return 1000 * float(np.percentile(delays, percentile)) if delays else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--drop-at", type=int, default=150, help="index of the dropped packet")
    args = parser.parse_args()
    print(
        "receive delay (packet sent -> 20 ms frame delivered), median before and after "
        f"one lost packet (#{args.drop_at}), {args.seconds:.0f} s of speech over loopback"
    )
    print(f"{'receiver':<22}{'before ms':>10}{'after ms':>10}{'after p99':>10}{'frames':>8}")
    for stock in (True, False):
        r = await run(stock, args.seconds, args.drop_at)
        name = "stock aiortc" if stock else "gateway InboundAudio"
        print(
            f"{name:<22}{r['before_ms']:>10.1f}{r['after_ms']:>10.1f}"
            f"{r['after_p99_ms']:>10.1f}{r['frames']:>8}"
            + ("  (stalled: no frame came after the loss)" if not r["frames_after"] else "")
        )


if __name__ == "__main__":
    asyncio.run(main())
