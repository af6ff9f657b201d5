"""The voice agent, measured: Whisper's accuracy and CPU, voice-to-voice latency, concurrency.

1. Speech to text: word error rate of the default transcriber (faster-whisper,
   tiny.en int8, one thread) on every recording in ``shared/audio`` that has a
   transcript, and the process CPU seconds per utterance, with the gateway's 15 s
   encoder window beside stock Whisper's 30 s window.
2. Voice to voice: simulated callers (sandbox, real aiortc peers) say each
   recording to the real ``agent`` bot, which talks to the scripted sandbox
   model (time to first token 0 and 300 ms). Per turn: the caller's last word ->
   the first bot audio packet to the RTP sender, broken into VAD hangover,
   transcription after the turn closed, the model's time to its first sentence,
   TTS of that sentence, and playout (queue to the first packet sent).
3. Concurrency: N agent calls at once, each saying recordings; the p50 response
   time (turn closed -> first packet) per N, against N=1.

CPU figures are process CPU time (the benchmark runs gateway, sandbox and callers
in one process), which holds up on a shared machine better than wall time.

    python benchmarks/agent.py [--skip-stt] [--skip-v2v] [--concurrency 1,2,4,6] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time
from pathlib import Path

import numpy as np

from gateway.agent.bot import AgentBot
from gateway.agent.config import AgentConfig, AgentServices
from gateway.agent.llm import LLMClient, LLMSettings
from gateway.media.audio import load_wav
from gateway.pipeline.plugins import default_tts
from gateway.pipeline.session import BotSession, session_factory
from gateway.pipeline.vad import VadConfig
from gateway.sandbox.llm import ScriptedLLM
from gateway.sandbox.stack import start_local_stack
from gateway.sandbox.user import SimulatedUser
from gateway.stt.whisper import WhisperTranscriber

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
TRANSCRIPTS = {
    "cards-001.wav": "ten of clubs",
    "cards-002.wav": "four queen of clubs",
    "cards-003.wav": "seven of clubs",
    "cards-004.wav": "five five",
    "cards-005.wav": "eight of spades four of clubs seven of hearts",
    "goforward.wav": "go forward ten meters",
    "numbers.wav": "thirty three four six ninety two",
    "forever-2.wav": "feels like these days go on forever",
}
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()  # noqa: E501
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    return " ".join(_ONES[int(d)] for d in str(n))  # "692" is read digit by digit here


def normalize(text: str) -> list[str]:
    """Lower case, no punctuation, numbers as words (Whisper writes digits)."""
    text = re.sub(r"\d+", lambda m: " " + _number(int(m.group())) + " ", text.lower())
    return re.findall(r"[a-z']+", text)


def wer(ref: list[str], hyp: list[str]) -> tuple[int, int]:
    """Word errors (substitutions + deletions + insertions) and reference length."""
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        prev, d[0] = d.copy(), i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return int(d[len(hyp)]), len(ref)


async def bench_stt() -> None:
    print("== speech to text: faster-whisper tiny.en (int8, 1 thread), shared/audio")
    rows = []
    for context in (15.0, 30.0):
        stt = WhisperTranscriber(context_s=context)
        await stt.prepare()
        await stt.transcribe(load_wav(AUDIO / "cards-001.wav"))  # warm
        errors = words = 0
        cpu = []
        for name, ref in TRANSCRIPTS.items():
            pcm = load_wav(AUDIO / name)
            t0 = time.process_time()
            hyp = (await stt.transcribe(pcm)).text
            cpu.append(time.process_time() - t0)
            e, n = wer(normalize(ref), normalize(hyp))
            errors, words = errors + e, words + n
            if context == 15.0:
                rows.append(f"  {name:14s} {len(pcm) / 16000:4.1f} s  {e}/{n} errors  {hyp!r}")
        print(
            f"window {context:4.0f} s: WER {errors / words:.1%} ({errors}/{words} words), "
            f"CPU per utterance mean {np.mean(cpu):.2f} s, max {np.max(cpu):.2f} s"
        )
    print("per recording (15 s window):")
    print("\n".join(rows))


async def _agent_stack(
    ttft_ms: float, workers: int = 1
) -> tuple[object, ScriptedLLM, AgentServices, list[AgentBot]]:
    llm = await ScriptedLLM(ttft_ms=ttft_ms, tokens_per_s=50).start()
    settings = LLMSettings(llm.url, llm.model, first_token_timeout=10, stall_timeout=10)
    stt = WhisperTranscriber(workers=workers)
    await stt.prepare()
    services = AgentServices(
        AgentConfig(settings, no_input_s=120), LLMClient(settings), stt, default_tts()
    )
    bots: list[AgentBot] = []

    def make() -> AgentBot:
        bot = AgentBot(services)
        bots.append(bot)
        return bot

    stack = await start_local_stack(session=session_factory(make, default_tts()), max_calls=50)
    return stack, llm, services, bots


async def _caller(
    stack: object, i: int, files: list[str], delay: float = 0.0
) -> tuple[BotSession, AgentBot]:
    gateway, sandbox = stack.gateway, stack.sandbox  # type: ignore[attr-defined]
    await asyncio.sleep(delay)
    call = await SimulatedUser(sandbox, f"1555100{i:04d}", f"Caller {i}").place_call()
    async with asyncio.timeout(30):
        await call.accepted.wait()
        await call.media_up.wait()
    await asyncio.sleep(0.3)
    session = gateway.calls.get(call.call_id).session
    for name in files:
        speech = load_wav(AUDIO / name)
        answered = len(session.metrics.response_latencies_ms)
        await call.play(speech).wait()
        async with asyncio.timeout(30):
            while len(session.metrics.response_latencies_ms) == answered:
                await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # let the answer play out before the next turn
    await call.hang_up()
    return session, session.bot


def _pct(values: list[float]) -> str:
    return f"{np.percentile(values, 50):6.0f} {np.percentile(values, 95):6.0f}"


async def bench_v2v() -> None:
    hangover = VadConfig().hangover_ms
    print("\n== voice to voice: caller's last word -> first bot audio packet (ms, p50 p95)")
    for ttft in (0.0, 300.0):
        stack, llm, services, _ = await _agent_stack(ttft)
        try:
            cpu0 = time.process_time()
            session, bot = await _caller(stack, 0, list(TRANSCRIPTS))
            cpu = time.process_time() - cpu0
        finally:
            await stack.aclose()  # type: ignore[attr-defined]
            await services.aclose()
            await llm.aclose()
        total = session.metrics.response_latencies_ms
        t = bot.timings[: len(total)]
        stt = [(x.transcript_ready - x.turn_closed) * 1000 for x in t]
        llm_ms = [(x.first_sentence - x.transcript_ready) * 1000 for x in t]
        tts = [(x.first_audio - x.first_sentence) * 1000 for x in t]
        ready = [(x.first_audio - x.turn_closed) * 1000 for x in t]
        playout = [tot - r for tot, r in zip(total, ready, strict=True)]
        ours = [tot - lm for tot, lm in zip(total, llm_ms, strict=True)]
        print(f"-- sandbox model, time to first token {ttft:.0f} ms; {len(total)} turns")
        print(f"  VAD hangover (fixed)                {hangover:6d} {hangover:6d}")
        print(f"  transcription after the turn closed {_pct(stt)}")
        print(f"  model: time to first sentence       {_pct(llm_ms)}")
        print(f"  TTS of the first sentence           {_pct(tts)}")
        print(f"  playout (queue -> first packet)     {_pct(playout)}")
        print(f"  turn closed -> first packet         {_pct(total)}")
        print(f"  voice to voice (hangover included)  {_pct([hangover + x for x in total])}")
        print(f"  without hangover and model time     {_pct(ours)}   (goal: p50 <= 150)")
        print(
            f"  speculative transcription: used on {bot.speculative_hits} of {len(total)} turns; "
            f"{bot.speculative_started} started (one per pause of 200 ms)"
        )
        print(f"  process CPU for the call: {cpu:.1f} s ({cpu / len(total):.2f} s per turn)")


async def bench_concurrency(levels: list[int], workers: int) -> None:
    print(
        "\n== concurrency: N agent calls at once (starts 0.8 s apart), 3 turns each, "
        f"GATEWAY_STT_WORKERS={workers}; turn closed -> first packet"
    )
    files = ["goforward.wav", "cards-005.wav", "forever-2.wav"]
    base = None
    for n in levels:
        stack, llm, services, _ = await _agent_stack(0.0, workers)
        try:
            cpu0, wall0 = time.process_time(), time.monotonic()
            results = await asyncio.gather(
                *(_caller(stack, i, files[i % 3 :] + files[: i % 3], 0.8 * i) for i in range(n))
            )
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        finally:
            await stack.aclose()  # type: ignore[attr-defined]
            await services.aclose()
            await llm.aclose()
        total = [x for s, _ in results for x in s.metrics.response_latencies_ms]
        p50 = float(np.percentile(total, 50))
        base = base or p50
        print(
            f"  N={n:2d}: p50 {p50:6.0f} ms  p95 {np.percentile(total, 95):6.0f} ms  "
            f"x{p50 / base:4.1f} of N=1   CPU {cpu / wall:.0%} of one core"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-stt", action="store_true")
    parser.add_argument("--skip-v2v", action="store_true")
    parser.add_argument("--concurrency", default="1,2,4,6", help="N values ('' to skip)")
    parser.add_argument("--workers", type=int, default=1, help="GATEWAY_STT_WORKERS")
    args = parser.parse_args()
    if not args.skip_stt:
        await bench_stt()
    if not args.skip_v2v:
        await bench_v2v()
    levels = [int(x) for x in args.concurrency.split(",") if x]
    if levels:
        await bench_concurrency(levels, args.workers)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
