"""CPU per 20 ms frame of the per-frame Python above the transport, stage by stage.

What a call does every 20 ms besides RTP, SRTP, Opus and ``sendto``: the decoded
frame's way from ``Call._on_frame`` through the bot session into the VAD, and the
frame clock's tick through the sender into ``PlayoutTrack.poll``. Each stage runs
on the frames of the recordings in ../shared/audio (speech with pauses, so turns
open and close as on a call) in a tight loop, in this process, without the
network; the figure is process CPU time per frame, best of ``--rounds`` (the
least disturbed by other processes on a shared machine).

Stages:

- ``webrtcvad alone``: WebRTC's VAD on the frame, the floor of the VAD stage;
- ``VadSegmenter.push``: the segmenter with its voice gate (the default);
- ``inbound frame``: what ``InboundAudio`` calls per decoded frame for the echo
  bot's session: ``BotSession._on_frame`` -> VAD, or its compiled listener
  (``_vadstep.FrameListener``: the VAD step, Python only at its actions);
- ``outbound tick, silence``: one frame clock tick of one call through
  ``PlayoutSender._on_tick`` and ``PlayoutTrack.poll`` to the transport's
  ``send_rtp_now`` (a no-op here), nothing playing;
- ``outbound tick, packets``: the same while Opus packets play;
- ``outbound tick, speech``: the same while 16 kHz speech plays (libopus encodes
  each frame; most of this stage is the encoder).

Each side runs in fresh interpreters, ``--ab-rounds`` of them, alternating with
``--base REV`` (exported with ``git archive``, its ``gateway`` package imported
first) when given, so drift on a shared machine hits both alike.

    python benchmarks/frame_path.py [--base REV] [--rounds 5] [--ab-rounds 3] [--calls 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import webrtcvad

from gateway.media.audio import FRAME_SAMPLES, SAMPLE_RATE, load_wav
from gateway.media.opus import OpusDecoder, OpusEncoder
from gateway.media.playout import PlayoutTrack
from gateway.pipeline.vad import VadSegmenter

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
SPEECH = ["cards-001", "cards-002", "cards-003", "cards-004", "cards-005", "goforward", "numbers"]
TICK = FRAME_SAMPLES / SAMPLE_RATE


def frames(repeat: int) -> list[Any]:
    """The recordings' whole frames, one after another, each its own array (as decoded)."""
    pcm = np.concatenate([load_wav(AUDIO / f"{name}.wav") for name in SPEECH * repeat])
    n = len(pcm) // FRAME_SAMPLES
    rows = [row.copy() for row in pcm[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)]
    # As the decoder hands them on: numpy arrays before gateway/media/pcm.py, array('h') since.
    if not isinstance(OpusDecoder().conceal(), np.ndarray):
        return [array("h", row.tobytes()) for row in rows]
    return rows


def best_us(run: Callable[[], int], rounds: int) -> float:
    """Best process CPU µs per frame over ``rounds`` runs; ``run`` returns its frame count."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        count = run()
        best = min(best, (time.process_time() - t0) / count)
    return best * 1e6


def vad_alone(pcm: list[Any]) -> Callable[[], int]:
    def run() -> int:
        is_speech = webrtcvad.Vad(2).is_speech
        for frame in pcm:
            is_speech(memoryview(frame), SAMPLE_RATE)
        return len(pcm)

    return run


def segmenter(pcm: list[Any]) -> Callable[[], int]:
    def run() -> int:
        push = VadSegmenter().push
        for frame in pcm:
            push(frame)
        return len(pcm)

    return run


async def inbound(pcm: list[Any], rounds: int) -> float:
    from bots.echo import EchoBot
    from gateway.calls import Call
    from gateway.events import Direction
    from gateway.pipeline.session import BotSession
    from gateway.pipeline.tts import TTS
    from gateway.records import CallRecord

    # A fresh call and session each round (the segmenter learns the room anew),
    # made before the clock starts: an RTCPeerConnection is no per-frame cost.
    sessions: list[tuple[Callable[[Any], None], BotSession]] = []
    for _ in range(rounds):
        call = Call(CallRecord("wacid.bench", Direction.USER_INITIATED, "1555"), graph=None)  # type: ignore[arg-type]
        session = BotSession(call, EchoBot(), cast(TTS, None))  # the echo bot never speaks
        if hasattr(call, "add_frame_listener"):
            # What the media path calls: a call's lone listener directly, the
            # session's compiled listener where it has one (what run() registers).
            target = getattr(session, "_listener", None) or session._on_frame
            call.add_frame_listener(target)
        else:  # a revision from before that: the call fans out
            call.frame_listeners.append(session._on_frame)
            target = call._on_frame
        sessions.append((target, session))

    def run() -> int:
        on_frame, session = sessions.pop()
        for frame in pcm:
            on_frame(frame)
        session._stall.cancel()
        return len(pcm)

    return best_us(run, rounds)


class NullTransport:
    """Stands in for aiortc's RTCDtlsTransport and the gateway's CallTransport: sends nothing."""

    state = "connected"

    def _register_rtp_sender(self, sender: Any, parameters: Any) -> None:
        pass

    def _unregister_rtp_sender(self, sender: Any) -> None:
        pass

    def send_rtp_now(self, data: bytes) -> None:
        pass

    async def _send_rtp(self, data: bytes) -> None:
        pass  # RTCP sender reports


async def outbound(what: str, calls: int, seconds: float, rounds: int) -> float:
    """One call's share of a frame clock tick, with ``calls`` senders on the clock."""
    from aiortc import RTCRtpSender
    from aiortc.rtcrtpparameters import (
        RTCRtcpParameters,
        RTCRtpCodecParameters,
        RTCRtpSendParameters,
    )

    from gateway.media.frameclock import frame_clock
    from gateway.media.sender import PlayoutSender

    opus = RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
    )
    loop = asyncio.get_running_loop()
    clock = frame_clock(loop)
    ticks = int(seconds / TICK)
    speech = np.concatenate([load_wav(AUDIO / f"{name}.wav") for name in SPEECH])
    encoder = OpusEncoder(20000)
    packets = [
        encoder.encode(speech[i : i + FRAME_SAMPLES])
        for i in range(0, len(speech) - FRAME_SAMPLES, FRAME_SAMPLES)
    ]
    tracks: list[PlayoutTrack] = []
    for _ in range(calls):
        track = PlayoutTrack()
        sender = PlayoutSender.adopt(RTCRtpSender(track, NullTransport()))  # type: ignore[arg-type]
        await sender.send(RTCRtpSendParameters(codecs=[opus], rtcp=RTCRtcpParameters(cname="b")))
        tracks.append(track)
    while clock.subscribers < calls:
        await asyncio.sleep(0.01)
    # From here the clock ticks by hand, on a loop clock of its own, with no timer.
    assert clock._ticker is not None
    clock._ticker.cancel()
    now = [loop.time()]
    clock._loop = _HandClock(now)  # type: ignore[assignment]

    def run() -> int:
        for track in tracks:
            track.flush()
            if what == "packets":
                track.play_packets(packets[:ticks])
            elif what == "speech":
                track.play(speech[: ticks * FRAME_SAMPLES])
        on_tick = clock._on_tick
        for _ in range(ticks):
            now[0] += TICK
            on_tick()
        return ticks * calls

    return best_us(run, rounds)


class _HandClock:
    """The loop as the frame clock sees it: a time moved by hand, timers that never fire."""

    def __init__(self, now: list[float]) -> None:
        self._now = now

    def time(self) -> float:
        return self._now[0]

    def call_at(self, when: float, callback: Any, *args: Any) -> _Timer:
        return _Timer()


class _Timer:
    def cancel(self) -> None:
        pass


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Every stage's best µs per frame in this process."""
    pcm = frames(args.repeat)
    figures = {
        "webrtcvad alone": best_us(vad_alone(pcm), args.rounds),
        "VadSegmenter.push": best_us(segmenter(pcm), args.rounds),
        "inbound frame (call+session+VAD)": asyncio.run(inbound(pcm, args.rounds)),
    }
    for what in ("silence", "packets", "speech"):
        seconds = len(pcm) * TICK / args.calls
        figures[f"outbound tick, {what}"] = asyncio.run(
            outbound(what, args.calls, seconds, args.rounds)
        )
    return figures


def child(tree: str | None, args: argparse.Namespace) -> dict[str, float]:
    """:func:`measure` in a fresh interpreter, with the gateway package from ``tree``."""
    command = [sys.executable, __file__, "--child", *sys.argv[1:]]
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, env.get("PYTHONPATH")]))
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def main(args: argparse.Namespace) -> None:
    if args.child:
        print(json.dumps(measure(args)))
        return
    from cpu_ab import export

    with tempfile.TemporaryDirectory() as tmp:
        base = export(args.base, Path(tmp)) if args.base else None
        print(
            f"per-frame Python above the transport, process CPU us per 20 ms frame, best of "
            f"{args.rounds} passes x {args.ab_rounds} processes; {args.repeat}x the recordings "
            f"(speech with pauses); outbound: {args.calls} senders on one frame clock"
            + (f"; base {args.base} ({base}) vs this checkout, alternating" if base else "")
        )
        best: dict[str, dict[str, float]] = {"base": {}, "this": {}}
        for _ in range(args.ab_rounds):
            for side in ("base", "this") if base else ("this",):
                figures = child(tmp if side == "base" else None, args)
                for name, us in figures.items():
                    best[side][name] = min(best[side].get(name, float("inf")), us)
        if base:
            print(f"  {'stage':<36} {'base':>8} {'this':>8}  this/base")
            for name, us in best["this"].items():
                b = best["base"][name]
                print(f"  {name:<36} {b:8.2f} {us:8.2f}  {us / b:.2f}")
        else:
            for name, us in best["this"].items():
                print(f"  {name:<36} {us:8.2f} us/frame")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="git revision to compare with (exported, run alternately)")
    parser.add_argument("--rounds", type=int, default=5, help="passes per stage per process")
    parser.add_argument("--ab-rounds", type=int, default=3, help="processes per side")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=4, help="times through the recordings")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    main(parser.parse_args())
