"""CPU per RTP packet of the media path, in one process, event loops and senders compared.

Pairs of real aiortc peers (ICE, DTLS-SRTP over loopback) in one process: each
side sends 20 ms Opus packets from a PlayoutTrack and decodes what it receives
with InboundAudio (libopus, 16 kHz). Prints the process CPU time per packet
(sent + received), for each variant, each in a fresh interpreter, alternating,
best of ``--rounds`` (CPU time, not wall time: a shared machine inflates it
less). Variants: the asyncio event loop or uvloop; the gateway's path
(PlayoutSender and CallTransport) or aiortc's own RTCRtpSender and transport.
(uvloop was tried this way and not kept: it measured no better than asyncio's
own loop here.)

    python benchmarks/media_path.py [--pairs 10] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

AUDIO = str(Path(__file__).resolve().parent.parent.parent / "shared" / "audio")
VARIANTS = {
    "asyncio + PlayoutSender": ("asyncio", True),
    "uvloop + PlayoutSender": ("uvloop", True),
    "asyncio + aiortc sender": ("asyncio", False),
}


async def run_pairs(pairs: int, seconds: float, lean: bool) -> dict[str, float]:
    from aiortc import RTCConfiguration, RTCPeerConnection

    from gateway import rtc
    from gateway.loadtest.recordings import load_recordings
    from gateway.media.inbound import InboundAudio
    from gateway.media.playout import PlayoutTrack
    from gateway.media.sender import PlayoutSender
    from gateway.media.transport import CallTransport

    rtc.configure(["127.0.0.1"])
    recordings, _ = load_recordings([AUDIO])
    received = [0]

    def on_frame(frame: object) -> None:
        received[0] += 1

    async def pair() -> tuple[RTCPeerConnection, RTCPeerConnection, list[PlayoutTrack]]:
        a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tracks = [PlayoutTrack(), PlayoutTrack()]
        sender_a = a.addTrack(tracks[0])
        if lean:  # the gateway's path: its sender and its transport (see calls.py)
            PlayoutSender.adopt(sender_a)
            CallTransport.adopt(sender_a.transport)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        transceiver = b.getTransceivers()[0]
        transceiver.sender.replaceTrack(tracks[1])
        if lean:
            PlayoutSender.adopt(transceiver.sender)
            CallTransport.adopt(transceiver.receiver.transport)
        transceiver.direction = "sendrecv"
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        for receiver in (a.getTransceivers()[0].receiver, transceiver.receiver):
            InboundAudio(receiver, on_frame, opus_pt=rtc.OPUS_PT, dtmf_pt=rtc.DTMF_PT).attach()
        return a, b, tracks

    peers = await asyncio.gather(*(pair() for _ in range(pairs)))
    await asyncio.sleep(3)  # ICE and DTLS done, media flowing
    for _, _, tracks in peers:
        for track in tracks:
            for recording in recordings:
                track.play_packets(recording.packets)
    sent_before = sum(t.stats.frames_sent for _, _, ts in peers for t in ts)
    received_before = received[0]
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    sent = sum(t.stats.frames_sent for _, _, ts in peers for t in ts) - sent_before
    got = received[0] - received_before
    for a, b, _ in peers:
        await a.close()
        await b.close()
    return {"cpu": cpu, "wall": wall, "sent": sent, "received": got}


def child(loop: str, lean: bool, pairs: int, seconds: float) -> None:
    coro = run_pairs(pairs, seconds, lean)
    if loop == "uvloop":
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best: dict[str, float] = {}
    expected = 2 * args.pairs * args.seconds * 50
    print(
        f"media path CPU per packet (sent + received), {args.pairs} pairs of peers in one "
        f"process, {args.seconds:.0f} s, best of {args.rounds}; us of process CPU per packet"
    )
    extra = [str(args.pairs), str(args.seconds)]
    variants = dict(VARIANTS)
    if importlib.util.find_spec("uvloop") is None:
        print("  (uvloop not installed: pip install uvloop==0.23.0 to compare it)")
        variants = {k: v for k, v in variants.items() if v[0] != "uvloop"}
    for _ in range(args.rounds):
        for name, (loop, lean) in variants.items():
            out = subprocess.run(
                [sys.executable, __file__, "--child", loop, str(int(lean)), *extra],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            per_packet = 1e6 * r["cpu"] / (r["sent"] + r["received"])
            best[name] = min(best.get(name, float("inf")), per_packet)
            print(
                f"  {name:<26} {per_packet:6.1f} us/packet  (sent {r['sent']:.0f}, "
                f"received {r['received']:.0f} of ~{expected:.0f})",
                flush=True,
            )
    base = best["asyncio + PlayoutSender"]
    print("best:")
    for name, value in best.items():
        print(f"  {name:<26} {value:6.1f} us/packet  ({value / base:.2f}x)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
