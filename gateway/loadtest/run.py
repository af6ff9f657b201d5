"""``gateway loadtest``: many simulated WhatsApp calls with recorded speech, measured.

The callers are built to be cheap, so the load generator is not what saturates
the machine: each recording is encoded to Opus once and the packets are reused
by every call, and what callers receive is counted, never decoded. Bot audio is
told from silence by packet size: the gateway sends silence as one cached
8-byte Opus packet, and any encoded sound is several times larger.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from aiortc.rtp import RtpPacket

from .. import rtc
from ..errors import AudioFileError, GatewayError
from ..media.audio import SAMPLE_RATE, frame_rms, load_wav
from ..media.inbound import InboundAudio
from ..media.opus import OpusEncoder
from ..metrics import parse_prometheus
from ..sandbox.cloud import CloudAPISandbox
from ..sandbox.user import SimulatedUser, UserCall

log = logging.getLogger(__name__)

# Packets larger than this carry sound; the gateway's silence packet is 8 bytes.
SOUND_PACKET_BYTES = 16
DEFAULT_SERVER = (sys.executable, "-m", "gateway", "serve")
# Frames louder than this (int16 RMS) count as speech when finding where words end.
SPEECH_RMS = 500.0
# A packet arriving later than this after its RTP timestamp says is "late".
LATE_AFTER = 0.060


@dataclass(frozen=True, eq=False)
class Recording:
    """A caller utterance: its name, PCM, and its Opus packets (encoded once)."""

    name: str
    pcm: np.ndarray
    packets: tuple[bytes, ...]

    @property
    def seconds(self) -> float:
        """Length of the recording."""
        return len(self.pcm) / SAMPLE_RATE

    @property
    def trailing_silence(self) -> float:
        """Seconds after the last loud 20 ms frame: response times count from speech end."""
        loud = np.flatnonzero(frame_rms(self.pcm) > SPEECH_RMS)
        return 0.0 if len(loud) == 0 else self.seconds - (loud[-1] + 1) * 0.020


def load_recordings(sources: Sequence[str]) -> tuple[list[Recording], list[str]]:
    """Load WAVs from files and folders; returns (recordings, warnings).

    A named file that cannot be read raises AudioFileError (the run is refused).
    Unreadable files found in a folder are skipped with a warning naming them.
    """
    recordings: list[Recording] = []
    warnings: list[str] = []
    encoder = OpusEncoder()
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for wav in sorted(path.glob("*.wav")):
                try:
                    pcm = load_wav(wav)
                except AudioFileError as exc:
                    warnings.append(f"skipped {exc.path}: {exc.reason}")
                    continue
                recordings.append(Recording(wav.name, pcm, tuple(encoder.encode_pcm(pcm))))
        else:
            pcm = load_wav(path)
            recordings.append(Recording(path.name, pcm, tuple(encoder.encode_pcm(pcm))))
    if not recordings:
        raise AudioFileError(", ".join(sources), "no readable WAV recordings")
    return recordings, warnings


class _PacketCounter(InboundAudio):
    """Counts a caller's received packets (no decoding): sound, loss, lateness."""

    def __init__(self, call: UserCall, stats: CallStats) -> None:
        receiver = next(t.receiver for t in call.pc.getTransceivers())
        super().__init__(receiver, on_frame=_ignore, opus_pt=rtc.OPUS_PT, dtmf_pt=rtc.DTMF_PT)
        self.stats_ = stats
        self.first_seq: int | None = None
        self.max_seq = 0
        self.base_offset: float | None = None
        self.last_sound_at: float | None = None
        self.sound_waiters: list[tuple[float, asyncio.Future[float]]] = []
        self.first_packet = asyncio.Event()

    def _push_audio(self, packet: RtpPacket) -> None:
        now = time.perf_counter()
        s = self.stats_
        s.packets_received += 1
        if s.first_packet_at is None:
            s.first_packet_at = now
            self.first_packet.set()
        # Sequence numbers wrap at 2**16; unwrap against the highest seen.
        seq = packet.sequence_number
        if self.first_seq is None:
            self.first_seq = self.max_seq = seq
        else:
            delta = (seq - (self.max_seq & 0xFFFF)) & 0xFFFF
            if delta < 0x8000:
                self.max_seq += delta
        offset = now - packet.timestamp / 48000
        if self.base_offset is None or offset < self.base_offset:
            self.base_offset = offset
        elif offset - self.base_offset > LATE_AFTER:
            s.late_packets += 1
        if len(packet.payload) > SOUND_PACKET_BYTES:
            s.sound_packets += 1
            self.last_sound_at = now
            if self.sound_waiters:
                waiters, self.sound_waiters = self.sound_waiters, []
                for after, fut in waiters:
                    if now >= after and not fut.done():
                        fut.set_result(now)
                    elif not fut.done():
                        self.sound_waiters.append((after, fut))

    def lost(self) -> int:
        if self.first_seq is None:
            return 0
        return max(0, self.max_seq - self.first_seq + 1 - self.stats_.packets_received)

    def next_sound(self, after: float) -> asyncio.Future[float]:
        """A future resolved with the arrival time of the first sound packet after ``after``."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.sound_waiters.append((after, fut))
        return fut


def _ignore(frame: np.ndarray) -> None:
    pass


@dataclass
class CallStats:
    """What one simulated caller measured."""

    index: int
    call_id: str = ""
    setup_accept_ms: float | None = None  # connect webhook sent -> accept received
    setup_media_ms: float | None = None  # connect webhook sent -> first packet received
    response_ms: list[float] = field(default_factory=list)
    barge_in_stop_ms: list[float] = field(default_factory=list)
    utterances: int = 0
    packets_sent: int = 0
    packets_received: int = 0
    sound_packets: int = 0
    lost_packets: int = 0
    late_packets: int = 0
    ended_cleanly: bool = False
    failure: str | None = None
    first_packet_at: float | None = None


async def run_caller(
    sandbox: CloudAPISandbox,
    index: int,
    recordings: Sequence[Recording],
    duration: float,
    rng: random.Random,
    barge_in_every: int = 3,
) -> CallStats:
    """One simulated caller: call, talk for ``duration`` seconds, measure, hang up."""
    stats = CallStats(index)
    user = SimulatedUser(sandbox, f"1555{index:07d}", f"Caller {index}")
    started = time.perf_counter()
    call: UserCall | None = None
    counter: _PacketCounter | None = None
    try:
        call = await user.place_call(inbound=False)
        stats.call_id = call.call_id
        counter = _PacketCounter(call, stats)
        counter.attach()
        async with asyncio.timeout(20):
            await call.accepted.wait()
            stats.setup_accept_ms = (time.perf_counter() - started) * 1000
            await call.media_up.wait()
            await counter.first_packet.wait()
        assert stats.first_packet_at is not None
        stats.setup_media_ms = (stats.first_packet_at - started) * 1000
        end_at = time.perf_counter() + duration
        turn = 0
        while time.perf_counter() < end_at and not call.ended.is_set():
            recording = recordings[(index + turn) % len(recordings)]
            turn += 1
            await call.play_packets(recording.packets).wait()
            stats.utterances += 1
            spoke_at = time.perf_counter() - recording.trailing_silence
            try:
                heard_at = await asyncio.wait_for(counter.next_sound(spoke_at), 5.0)
            except TimeoutError:
                stats.failure = stats.failure or "no bot response within 5 s"
                continue
            stats.response_ms.append((heard_at - spoke_at) * 1000)
            if barge_in_every and turn % barge_in_every == 0 and recording.seconds > 1.0:
                # Talk over the bot's reply and time how long its audio keeps coming.
                await asyncio.sleep(0.3)
                barge_at = time.perf_counter()
                playback = call.play_packets(recording.packets)
                await asyncio.sleep(1.0)
                if counter.last_sound_at is not None and counter.last_sound_at > barge_at:
                    stats.barge_in_stop_ms.append((counter.last_sound_at - barge_at) * 1000)
                await playback.wait()
                # Let the bot answer the barge-in utterance before the next turn.
                await asyncio.sleep(1.0)
            await asyncio.sleep(rng.uniform(1.2, 2.5))
        stats.packets_sent = call.playout.stats.frames_sent
        if call.ended.is_set():
            stats.failure = stats.failure or f"ended early: {call.end_reason}"
        else:
            await call.hang_up()
            stats.ended_cleanly = stats.failure is None
    except TimeoutError:
        stats.failure = "call setup timed out (20 s)"
    except Exception as exc:  # one broken call is a result, not a crash of the run
        stats.failure = f"{type(exc).__name__}: {exc}"
        log.exception("caller %d failed", index)
    finally:
        if counter is not None:
            stats.lost_packets = counter.lost()
            counter.detach()
        if call is not None:
            await call.close()
    return stats


# --- the gateway under test -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayUnderTest:
    """A gateway to load: started here as a subprocess, or a remote one."""

    url: str
    app_secret: str
    access_token: str
    process: asyncio.subprocess.Process | None = None

    async def metrics(self, client: httpx.AsyncClient) -> dict[str, float]:
        """The gateway's /metrics, parsed."""
        response = await client.get(f"{self.url}/metrics")
        return parse_prometheus(response.text)

    async def stop(self) -> None:
        """Stop the subprocess, if we started one."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_local_gateway(
    graph_url: str,
    *,
    bot: str,
    max_calls: int,
    extra_env: dict[str, str] | None = None,
    command: Sequence[str] = DEFAULT_SERVER,
) -> GatewayUnderTest:
    """Run ``command`` (the gateway by default) on a free loopback port, using ``graph_url``."""
    port = _free_port()
    secret, token = secrets.token_hex(16), secrets.token_hex(16)
    env = {
        **os.environ,
        "WHATSAPP_ACCESS_TOKEN": token,
        "WHATSAPP_APP_SECRET": secret,
        "WHATSAPP_VERIFY_TOKEN": secrets.token_hex(8),
        "WHATSAPP_PHONE_NUMBER_ID": "106540352242922",
        "WHATSAPP_GRAPH_URL": graph_url,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_BOT": bot,
        "GATEWAY_MAX_CALLS": str(max_calls),
        "GATEWAY_MEDIA_ADDRESSES": "127.0.0.1",
        "GATEWAY_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    gateway = GatewayUnderTest(f"http://127.0.0.1:{port}", secret, token, process)
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if process.returncode is not None:
                raise GatewayError(f"the gateway exited with code {process.returncode}")
            try:
                if (await client.get(f"{gateway.url}/healthz")).status_code == 200:
                    return gateway
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    await gateway.stop()
    raise GatewayError("the gateway did not come up within 10 s")


# --- the run ------------------------------------------------------------------------


@dataclass
class Sample:
    """One second of the run, as the gateway reported it."""

    t: float
    active_calls: float
    cpu_seconds: float
    call_seconds: float
    rss_bytes: float
    loop_lag_p99: float


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of ``values`` (None when empty)."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    arr = np.asarray(values, float)
    return {
        "count": len(arr),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }


@dataclass
class LoadTestConfig:
    """What ``gateway loadtest`` was asked to do."""

    calls: int
    rate: float
    duration: float
    audio: list[str]
    bot: str = "echo"
    gateway_url: str | None = None
    app_secret: str | None = None
    access_token: str | None = None
    graph_port: int = 0
    seed: int = 1
    progress: bool = True
    # Start this instead of ``python -m gateway serve`` (the benchmarks' stock baseline).
    server_command: tuple[str, ...] | None = None


async def run_load_test(config: LoadTestConfig) -> dict[str, Any]:
    """Run the whole load test and return the report (a JSON-ready dict)."""
    recordings, warnings = await asyncio.get_running_loop().run_in_executor(
        None, load_recordings, config.audio
    )
    for warning in warnings:
        print(f"loadtest: {warning}", file=sys.stderr)
    rtc.configure(["127.0.0.1"])
    secret = config.app_secret or secrets.token_hex(16)
    token = config.access_token or secrets.token_hex(16)
    sandbox = CloudAPISandbox(
        webhook_url="", app_secret=secret, access_token=token, port=config.graph_port
    )
    await sandbox.start()
    gateway: GatewayUnderTest
    if config.gateway_url:
        gateway = GatewayUnderTest(config.gateway_url.rstrip("/"), secret, token)
    else:
        gateway = await start_local_gateway(
            sandbox.graph_url,
            bot=config.bot,
            max_calls=config.calls + 10,
            command=config.server_command or DEFAULT_SERVER,
        )
        sandbox.app_secret, sandbox.access_token = gateway.app_secret, gateway.access_token
    sandbox.webhook_url = f"{gateway.url}/webhook"
    samples: list[Sample] = []
    results: list[CallStats] = []
    rng = random.Random(config.seed)
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            before = await gateway.metrics(client)
            tasks: list[asyncio.Task[CallStats]] = []
            sampler = asyncio.create_task(
                _sample(gateway, client, started, samples, results, tasks, config)
            )
            try:
                for i in range(config.calls):
                    caller_rng = random.Random(rng.random())
                    tasks.append(
                        asyncio.create_task(
                            run_caller(sandbox, i, recordings, config.duration, caller_rng)
                        )
                    )
                    await asyncio.sleep(1 / config.rate)
                results.extend(await asyncio.gather(*tasks))
                await asyncio.sleep(1.0)  # let the last terminates land
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
                for task in tasks:
                    task.cancel()
            after = await gateway.metrics(client)
    finally:
        await sandbox.aclose()
        await gateway.stop()
    if config.progress:
        print(file=sys.stderr)
    return _report(
        config, recordings, results, samples, before, after, time.perf_counter() - started
    )


async def _sample(
    gateway: GatewayUnderTest,
    client: httpx.AsyncClient,
    started: float,
    samples: list[Sample],
    results: list[CallStats],
    tasks: Sequence[asyncio.Task[CallStats]],
    config: LoadTestConfig,
) -> None:
    while True:
        await asyncio.sleep(1.0)
        try:
            m = await gateway.metrics(client)
        except httpx.HTTPError:
            continue
        samples.append(
            Sample(
                t=time.perf_counter() - started,
                active_calls=m.get("gateway_active_calls", 0),
                cpu_seconds=m.get("process_cpu_seconds_total", 0),
                call_seconds=m.get("gateway_call_seconds_total", 0),
                rss_bytes=m.get("process_resident_memory_bytes", 0),
                loop_lag_p99=m.get("gateway_event_loop_lag_p99_seconds", 0),
            )
        )
        if config.progress:
            done = [t.result() for t in tasks if t.done() and not t.cancelled()]
            failed = sum(1 for r in done if r.failure)
            print(
                f"\rloadtest: {samples[-1].t:5.0f} s  active {int(samples[-1].active_calls):3d}"
                f"  done {len(done):3d}/{config.calls}  failed {failed}"
                f"  loop lag p99 {samples[-1].loop_lag_p99 * 1000:5.1f} ms",
                end="",
                file=sys.stderr,
                flush=True,
            )


def _report(
    config: LoadTestConfig,
    recordings: Sequence[Recording],
    results: Sequence[CallStats],
    samples: Sequence[Sample],
    before: dict[str, float],
    after: dict[str, float],
    wall: float,
) -> dict[str, Any]:
    cpu = after.get("process_cpu_seconds_total", 0) - before.get("process_cpu_seconds_total", 0)
    call_seconds = after.get("gateway_call_seconds_total", 0) - before.get(
        "gateway_call_seconds_total", 0
    )
    peak = max((s.active_calls for s in samples), default=0)
    rss = [s.rss_bytes for s in samples]
    received = sum(r.packets_received for r in results)
    failures = Counter(r.failure for r in results if r.failure)
    return {
        "config": {
            k: v for k, v in asdict(config).items() if k not in ("app_secret", "access_token")
        },
        "recordings": [r.name for r in recordings],
        "wall_seconds": wall,
        "calls": len(results),
        "ended_cleanly": sum(1 for r in results if r.ended_cleanly),
        "failures": dict(failures),
        "metrics_ms": {
            "setup_accept": percentiles([r.setup_accept_ms for r in results if r.setup_accept_ms]),
            "setup_media": percentiles([r.setup_media_ms for r in results if r.setup_media_ms]),
            "response": percentiles([x for r in results for x in r.response_ms]),
            "barge_in_stop": percentiles([x for r in results for x in r.barge_in_stop_ms]),
        },
        "packets": {
            "sent": sum(r.packets_sent for r in results),
            "received": received,
            "lost": sum(r.lost_packets for r in results),
            "late": sum(r.late_packets for r in results),
            "lost_or_late_ratio": (
                sum(r.lost_packets + r.late_packets for r in results) / received
                if received
                else None
            ),
        },
        "gateway": {
            "cpu_seconds": cpu,
            "call_seconds": call_seconds,
            "cpu_ms_per_call_second": 1000 * cpu / call_seconds if call_seconds else None,
            "peak_active_calls": peak,
            "rss_bytes_peak": max(rss, default=0),
            "rss_bytes_per_call": (max(rss) - min(rss)) / peak if rss and peak else None,
            "loop_lag_p99_ms_max": 1000 * max((s.loop_lag_p99 for s in samples), default=0),
        },
        "timeline": [asdict(s) for s in samples],
        "per_call": [
            {k: v for k, v in asdict(r).items() if k != "first_packet_at"} for r in results
        ],
    }


def summary_table(report: dict[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    lines = [
        f"calls: {report['calls']}, ended cleanly: {report['ended_cleanly']}, "
        f"wall time {report['wall_seconds']:.0f} s",
        "",
        f"{'metric (ms)':<28}{'count':>6}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}",
    ]
    names = {
        "setup_accept": "setup: webhook -> accept",
        "setup_media": "setup: webhook -> media",
        "response": "response: speech end -> bot",
        "barge_in_stop": "barge-in: talk -> bot stops",
    }
    for key, label in names.items():
        p = report["metrics_ms"][key]
        cells = "".join(
            f"{p[q]:9.0f}" if p[q] is not None else f"{'-':>9}"
            for q in ("p50", "p95", "p99", "max")
        )
        lines.append(f"{label:<28}{p['count']:>6}{cells}")
    pk = report["packets"]
    ratio = pk["lost_or_late_ratio"]
    lines += [
        "",
        f"packets: sent {pk['sent']}, received {pk['received']}, "
        f"lost {pk['lost']}, late {pk['late']}"
        + (f" ({100 * ratio:.2f}% lost or late)" if ratio is not None else ""),
    ]
    g = report["gateway"]
    if g["cpu_ms_per_call_second"] is not None:
        per_call = g["rss_bytes_per_call"]
        lines.append(
            f"gateway: {g['cpu_ms_per_call_second']:.1f} ms CPU per call-second, "
            f"peak {g['peak_active_calls']:.0f} calls, "
            f"RSS peak {g['rss_bytes_peak'] / 2**20:.0f} MiB"
            + (f" (~{per_call / 2**20:.1f} MiB per call)" if per_call else "")
            + f", event-loop lag p99 max {g['loop_lag_p99_ms_max']:.1f} ms"
        )
    if report["failures"]:
        lines.append("failures by reason:")
        for reason, count in sorted(report["failures"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:4d}  {reason}")
    return "\n".join(lines)


def write_charts(report: dict[str, Any], folder: str) -> list[str]:
    """PNG charts of the run (needs matplotlib: ``pip install '.[charts]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise GatewayError(
            "charts need matplotlib: pip install 'wa-voice-gateway[charts]'"
        ) from exc
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    responses = [x for c in report["per_call"] for x in c["response_ms"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(responses or [0], bins=30, color="#3b7dd8")
    ax.set_xlabel("response latency (ms): caller speech end -> first bot audio")
    ax.set_ylabel("responses")
    ax.set_title(f"{report['calls']} calls, {len(responses)} responses")
    fig.tight_layout()
    paths.append(str(out / "latency.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    timeline = report["timeline"]
    if timeline:
        t = [s["t"] for s in timeline]
        cpu = [0.0] + [
            100 * (b["cpu_seconds"] - a["cpu_seconds"]) / max(1e-9, b["t"] - a["t"])
            for a, b in itertools.pairwise(timeline)
        ]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(t, [s["active_calls"] for s in timeline], color="#3b7dd8", label="active calls")
        ax.set_xlabel("seconds")
        ax.set_ylabel("active calls")
        ax2 = ax.twinx()
        ax2.plot(t, cpu, color="#d8563b", label="gateway CPU %")
        ax2.set_ylabel("gateway CPU (% of one core)")
        fig.legend(loc="upper left")
        fig.tight_layout()
        paths.append(str(out / "load.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def save_report(report: dict[str, Any], path: str) -> None:
    """Write the JSON report."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
