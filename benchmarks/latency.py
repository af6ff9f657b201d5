"""Latency the gateway adds: end of caller turn -> first bot audio packet on the wire.

Simulated callers (sandbox, real aiortc peers on loopback) speak recordings to
the echo bot. The gateway measures, per turn, from the moment the VAD hangover
closes the caller's utterance to the moment the first frame of the reply is
handed to aiortc's RTP sender (it is sent in the same event-loop step). The
echo bot needs no TTS, so this is the gateway's own share. (What callers
measure end to end, VAD hangover included, is in the load tester's report.)

    python benchmarks/latency.py [--calls 4] [--turns 6] [--media-read tick|arrival]

The caller's frames reach the VAD at the gateway's frame clock's tick in ``tick``
mode (the default), before the tick's senders run; the time a datagram waits in
its socket for that tick comes before the VAD and is not in this figure
(``benchmarks/media_read.py`` measures it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import numpy as np

from gateway.app import Gateway
from gateway.media.audio import load_wav
from gateway.pipeline.plugins import session_for
from gateway.pipeline.session import BotSession
from gateway.sandbox.cloud import CloudAPISandbox
from gateway.sandbox.stack import start_local_stack
from gateway.sandbox.user import SimulatedUser

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
FILES = ["cards-001.wav", "cards-003.wav", "goforward.wav", "cards-004.wav", "forever-2.wav"]


async def caller(sandbox: CloudAPISandbox, gateway: Gateway, i: int, turns: int) -> list[float]:
    call = await SimulatedUser(sandbox, f"1555000{i:04d}", f"Caller {i}").place_call()
    async with asyncio.timeout(15):
        await call.accepted.wait()
        await call.media_up.wait()
    session = gateway.calls.get(call.call_id).session
    assert isinstance(session, BotSession)
    for turn in range(turns):
        speech = load_wav(AUDIO / FILES[(i + turn) % len(FILES)])
        await call.play(speech).wait()
        await asyncio.sleep(len(speech) / 16000 + 1.5)  # hangover, then the echo
    measured = list(session.metrics.response_latencies_ms)
    await call.hang_up()
    return measured


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--media-read", choices=["tick", "arrival"], default="tick")
    args = parser.parse_args()
    stack = await start_local_stack(
        session=session_for("echo"), env={"GATEWAY_MEDIA_READ": args.media_read}
    )
    try:
        results = await asyncio.gather(
            *(caller(stack.sandbox, stack.gateway, i, args.turns) for i in range(args.calls))
        )
    finally:
        await stack.aclose()
    ours = np.array([x for r in results for x in r])
    print(
        "gateway-added response latency (VAD turn end -> first reply packet to the RTP sender), "
        f"echo bot, {args.calls} concurrent calls x {args.turns} turns, "
        f"media read at {args.media_read}"
    )
    print(f"turns measured: {len(ours)}")
    print(
        f"p50 {np.percentile(ours, 50):.1f} ms   p99 {np.percentile(ours, 99):.1f} ms   "
        f"max {ours.max():.1f} ms"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
