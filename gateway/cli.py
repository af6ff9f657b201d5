"""The ``gateway`` command: ``serve``, ``sandbox`` (the demo), ``bots``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .config import MEDIA_READ_MODES, MediaRead, media_read
from .errors import ConfigError, GatewayError
from .logs import configure_logging

log = logging.getLogger("gateway")

ENV_HELP = """\
environment (flags override):
  WHATSAPP_ACCESS_TOKEN     Graph API bearer token (required for serve)
  WHATSAPP_APP_SECRET       app secret that signs webhooks (required for serve)
  WHATSAPP_VERIFY_TOKEN     token for the webhook verification handshake (required for serve)
  WHATSAPP_PHONE_NUMBER_ID  the business phone number id (required for serve)
  WHATSAPP_GRAPH_URL        default https://graph.facebook.com/v23.0
  GATEWAY_HOST, GATEWAY_PORT  default 127.0.0.1:8080
  GATEWAY_BOT               bot plugin name, default echo
  GATEWAY_MAX_CALLS         concurrent calls before new ones are rejected, default 100
  GATEWAY_MEDIA_ADDRESSES   comma-separated ICE host addresses, default every interface
  GATEWAY_API_KEY           enables the HTTP API for backends (bearer key)
  GATEWAY_RING_TIMEOUT      seconds a business-initiated call rings, default 45
  GATEWAY_ANSWER_TIMEOUT    seconds to answer a user's call (pre_accept + accept), default 20
  GATEWAY_DATA_DIR          where call records, permissions and the webhook journal are kept
                            (SQLite), default $XDG_STATE_HOME/wa-voice-gateway
                            (~/.local/state/wa-voice-gateway)
  GATEWAY_RETENTION_DAYS    days ended call records and dedupe keys are kept, default 30
  GATEWAY_IVR_MENU          menu file of the ivr bot, default bots/menu.toml
  GATEWAY_LOG_LEVEL         DEBUG, INFO (default), WARNING, ERROR
  GATEWAY_LOG_FORMAT        text (default) or json (one object per line, with call_id)
  GATEWAY_RECORDINGS_DIR    record every answered call there (stereo Ogg Opus), default off
  GATEWAY_DRAIN_TIMEOUT     seconds calls may run on after SIGTERM, default 120
  GATEWAY_SHUTDOWN_TIMEOUT  seconds the closing after that (or after a second SIGTERM) may
                            take; then the process is ended (exit code 70), default 30
  GATEWAY_LLM_URL, GATEWAY_LLM_MODEL  OpenAI-compatible model of the agent bot
  GATEWAY_LLM_API_KEY       bearer key of the model server, optional
  GATEWAY_LLM_TIMEOUT       seconds to the first token and between tokens, default 5
  GATEWAY_AGENT_PROMPT      the agent's system prompt: a file path or the text
  GATEWAY_AGENT_GREETING    what the agent says first, default nothing
  GATEWAY_AGENT_NO_INPUT    seconds of silence before a re-prompt, default 10
  GATEWAY_AGENT_MAX_CALL    longest agent call in seconds, default 600
  GATEWAY_STT               speech to text: whisper (default) or openai (GATEWAY_STT_URL)
  GATEWAY_TTS               voice plugin, default espeak
  GATEWAY_EVENTS_URL        POST signed call events (started, answered, ended) there
  GATEWAY_EVENTS_SECRET     HMAC key of their X-Gateway-Signature-256 (required with the URL)
  GATEWAY_EVENTS_MAX_AGE    seconds an undelivered event is retried, default 3600
  GATEWAY_METRICS_PORT      also serve /metrics on this port (+ GATEWAY_WORKER_INDEX per worker)
  GATEWAY_VAD_VOICE_GATE    turn-taking for rooms with other voices and noise (TV, babble):
                            the caller is judged against the room's loud end; default 1,
                            0 for WebRTC's VAD with the floor gate only (the old default)
  GATEWAY_OPUS_COMPLEXITY   Opus encoder effort 0-10 for the speech sent to callers, default 5:
                            lower costs less CPU per talking call and scores lower in PESQ
                            (docs/performance.md, benchmarks/opus_quality.py)
  GATEWAY_MEDIA_READ        how calls' media sockets are read: tick (default: all calls' at the
                            20 ms frame clock, one wake-up; the bot hears a frame up to 20 ms,
                            about 10 on average, later) or arrival (a wake-up per datagram)
cluster mode (every `gateway serve` on the same Redis is one worker of a cluster):
  GATEWAY_REDIS_URL         e.g. redis://10.0.0.5:6379/0; unset: one process, in memory
  GATEWAY_CLUSTER_MAX_CALLS concurrent calls across the cluster, default 1000
  GATEWAY_LEASE_SECONDS     a lost worker's calls are ended within this, default 10
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Voice-bot media gateway for WhatsApp Business calling.",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the gateway: receive webhooks, answer calls, run the bot",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="listen address (GATEWAY_HOST)")
    serve.add_argument("--port", type=int, help="listen port (GATEWAY_PORT)")
    serve.add_argument("--bot", help="bot plugin to run on each call (GATEWAY_BOT)")
    serve.add_argument("--max-calls", type=int, help="concurrent call limit (GATEWAY_MAX_CALLS)")
    _add_complexity(serve)
    _add_media_read(serve)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT); more than 1 needs "
        "GATEWAY_REDIS_URL (default 1)",
    )

    cluster = sub.add_parser(
        "cluster",
        help="start a private Redis and N workers on this machine (a local cluster)",
        description="Starts Debian's redis-server on a free port (no persistence) and "
        "`gateway serve --workers N` pointed at it; prints the URL. Same environment as "
        "serve. Ctrl-C drains the workers, a second Ctrl-C ends their calls now.",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cluster.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    cluster.add_argument("--host", help="listen address (GATEWAY_HOST)")
    cluster.add_argument("--port", type=int, help="listen port (GATEWAY_PORT)")
    cluster.add_argument("--bot", help="bot plugin to run on each call (GATEWAY_BOT)")
    cluster.add_argument("--max-calls", type=int, help="calls per worker (GATEWAY_MAX_CALLS)")
    _add_complexity(cluster)
    _add_media_read(cluster)
    cluster.add_argument(
        "--sandbox",
        action="store_true",
        help="no WhatsApp account needed: point the workers at the built-in Cloud API sandbox, "
        "place a few simulated calls through the cluster, then keep serving",
    )
    cluster.add_argument(
        "--calls", type=int, default=4, help="simulated calls placed with --sandbox (default 4)"
    )

    demo = sub.add_parser(
        "sandbox",
        help="run the gateway against the built-in Cloud API sandbox and place a demo call",
    )
    demo.add_argument("--bot", default="echo", help="bot plugin to talk to (default: echo)")
    demo.add_argument(
        "--audio",
        help="WAV file the simulated user says (default: ../shared/audio/goforward.wav when "
        "present, else synthesized speech)",
    )
    demo.add_argument(
        "--record", default="artifacts/demo-heard.wav", help="where to save what the user heard"
    )
    demo.add_argument("--digits", default="", help="DTMF keys the user presses after speaking")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="instead of the demo call, serve a web page to call bots from a browser "
        "(http://127.0.0.1:PORT/phone) until Ctrl-C",
    )
    demo.add_argument(
        "--port", type=int, default=8765, help="port of the phone page with --serve (default 8765)"
    )

    call = sub.add_parser(
        "call",
        help="place a call to a WhatsApp user through a running gateway's HTTP API",
        description="Place a business-initiated call. Needs a running gateway with "
        "GATEWAY_API_KEY set; this command uses the same key.",
    )
    call.add_argument("wa_id", help="the user's WhatsApp number")
    call.add_argument("--bot", help="bot plugin for this call (default: the gateway's)")
    call.add_argument("--callback-data", help="biz_opaque_callback_data (at most 512 characters)")
    call.add_argument("--ring-timeout", type=float, help="seconds to ring before giving up")
    call.add_argument(
        "--request-permission",
        action="store_true",
        help="if the user has not granted call permission, send a permission request instead",
    )
    call.add_argument("--wait", action="store_true", help="follow the call until it ends")
    call.add_argument("--url", help="gateway base URL (GATEWAY_URL, default http://127.0.0.1:8080)")
    call.add_argument("--api-key", help="API key (GATEWAY_API_KEY)")

    load = sub.add_parser(
        "loadtest",
        help="drive many simulated calls with recorded speech and report what they measured",
        description="Places N concurrent sandbox calls, ramped at R per second, each speaking "
        "the given recordings with pauses between utterances, and reports setup time, "
        "response latency, barge-in stop time, packet loss and lateness, and the gateway's "
        "CPU per call-second, memory and event-loop lag (read from its /metrics). "
        "Without --gateway-url it starts a local gateway subprocess for the run.",
    )
    load.add_argument("--calls", type=int, default=10, help="concurrent calls (default 10)")
    load.add_argument(
        "--rate", type=float, default=5.0, help="calls started per second (default 5)"
    )
    load.add_argument(
        "--duration", type=float, default=20.0, help="seconds each call talks (default 20)"
    )
    load.add_argument(
        "--audio",
        nargs="+",
        required=True,
        metavar="WAV_OR_DIR",
        help="WAV files or folders of them (any rate/channels; unreadable files are refused)",
    )
    load.add_argument("--bot", default="echo", help="bot the local gateway runs (default echo)")
    load.add_argument("--report", help="write the JSON report here")
    load.add_argument("--charts", metavar="DIR", help="write PNG charts here (needs matplotlib)")
    load.add_argument("--gateway-url", help="load a running gateway instead of starting one")
    load.add_argument("--graph-port", type=int, default=0, help="port of the sandbox's Graph API")
    load.add_argument(
        "--seed", type=int, default=1, help="random seed for pauses and phases (default 1)"
    )
    load.add_argument(
        "--phases",
        choices=("independent", "shared"),
        default="independent",
        help="when callers send their 20 ms frames: each at a random phase of its own, as "
        "phones do (default), or all at the same instants, one burst per 20 ms (the load "
        "of figures measured before this option)",
    )

    sub.add_parser("bots", help="list the installed bot plugins")
    return parser


def _complexity(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 10, got {raw[:40]!r}")
    return value


def _add_complexity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--opus-complexity",
        type=_complexity,
        metavar="0-10",
        help="Opus encoder effort for the speech sent to callers: lower saves CPU, costs "
        "quality (GATEWAY_OPUS_COMPLEXITY, default 5)",
    )


def _media_read(raw: str) -> MediaRead:
    try:
        return media_read(raw, "--media-read")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(
            f"must be {' or '.join(MEDIA_READ_MODES)}, got {raw[:40]!r}"
        ) from exc


def _add_media_read(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--media-read",
        type=_media_read,
        metavar="|".join(MEDIA_READ_MODES),
        help="read calls' media sockets at the 20 ms frame clock (tick: one wake-up for all "
        "calls, a frame heard up to 20 ms later) or at each datagram (arrival) "
        "(GATEWAY_MEDIA_READ, default tick)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script."""
    # Before numpy is imported: its OpenBLAS would start a thread per core, idle
    # for good (the gateway's products are a few hundred samples, which OpenBLAS
    # computes on the calling thread anyway). The operator's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = _parser().parse_args(argv)
    level = "DEBUG" if args.verbose else os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper()
    try:
        configure_logging(level, os.environ.get("GATEWAY_LOG_FORMAT", "text"))
    except ConfigError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2
    if not args.verbose:
        for noisy in ("aioice", "aiortc", "aiohttp.access", "httpx", "aiosqlite"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command == "serve":
            if args.workers < 1:
                raise ConfigError("--workers must be at least 1")
            if args.workers > 1:
                return asyncio.run(_serve_workers(args, redis_url=None))
            return asyncio.run(_serve(args))
        if args.command == "cluster":
            return asyncio.run(_cluster(args))
        if args.command == "sandbox":
            from .sandbox.demo import run_demo, serve_phone

            if args.serve:
                return asyncio.run(serve_phone(bot=args.bot, port=args.port))
            return asyncio.run(
                run_demo(bot=args.bot, audio=args.audio, record=args.record, digits=args.digits)
            )
        if args.command == "call":
            from .client import place_call

            return asyncio.run(place_call(args))
        if args.command == "loadtest":
            return asyncio.run(_loadtest(args))
        if args.command == "bots":
            from .pipeline.plugins import available_bots

            for name in available_bots():
                print(name)
            return 0
    except GatewayError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


async def _serve(args: argparse.Namespace) -> int:
    from .app import Gateway
    from .config import load_settings
    from .heap import freeze_startup_objects
    from .pipeline.plugins import session_for
    from .pipeline.vad import VadConfig
    from .shutdown import ExitDeadline

    settings = load_settings(
        host=args.host,
        port=args.port,
        bot=args.bot,
        max_calls=args.max_calls,
        opus_complexity=args.opus_complexity,
        media_read=args.media_read,
    )
    vad = VadConfig(voice_gate=settings.vad_voice_gate)
    gateway = Gateway(
        settings,
        session=session_for(settings.bot, vad=vad),
        sessions=lambda name: session_for(name, vad=vad),
    )
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    await gateway.start()
    freeze_startup_objects()
    print(
        f"gateway: serving webhooks on {gateway.url}/webhook (bot {settings.bot}, "
        f"Opus complexity {settings.opus_complexity}, media read at {settings.media_read}); "
        "Ctrl-C or SIGTERM drains",
        flush=True,
    )
    await signals.get()
    # First signal: drain (readyz 503, calls run on); a second one ends every call now.
    drain = asyncio.create_task(gateway.drain())
    again = asyncio.create_task(signals.get())
    await asyncio.wait({drain, again}, return_when=asyncio.FIRST_COMPLETED)
    if again.done():
        log.warning("second signal: ending every call now")
    for task in (drain, again):
        task.cancel()
    await asyncio.gather(drain, again, return_exceptions=True)
    # From here the process is gone within the shutdown timeout, whatever hangs.
    ExitDeadline(settings.shutdown_timeout).arm()
    await gateway.aclose()
    return 0


async def _serve_workers(args: argparse.Namespace, redis_url: str | None) -> int:
    from .cluster.redis_server import free_port
    from .cluster.supervisor import run_workers, worker_env
    from .config import load_settings

    env = worker_env(
        os.environ,
        host=args.host,
        port=args.port,
        bot=args.bot,
        max_calls=args.max_calls,
        opus_complexity=args.opus_complexity,
        media_read=args.media_read,
        redis_url=redis_url,
    )
    settings = load_settings(env)  # refuse bad settings here, not N times
    if settings.redis_url is None:
        raise ConfigError(
            "--workers needs GATEWAY_REDIS_URL: workers share calls through Redis "
            "(or run `gateway cluster`, which starts one)"
        )
    if settings.port == 0:
        env["GATEWAY_PORT"] = str(free_port(settings.host))
    url = f"http://{settings.host}:{env.get('GATEWAY_PORT', settings.port)}"
    print(f"gateway: {args.workers} workers serving webhooks on {url}/webhook", flush=True)
    return await run_workers(args.workers, env)


async def _cluster(args: argparse.Namespace) -> int:
    from .cluster.redis_server import RedisServer

    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.sandbox:
        from .cluster.demo import run_sandbox_cluster

        return await run_sandbox_cluster(args.workers, calls=args.calls, port=args.port)
    redis = RedisServer()
    await redis.start()
    print(f"gateway: Redis at {redis.url} (no persistence)", flush=True)
    try:
        return await _serve_workers(args, redis_url=redis.url)
    finally:
        await redis.aclose()


async def _loadtest(args: argparse.Namespace) -> int:
    from .loadtest import (
        LoadTestConfig,
        run_load_test,
        save_report,
        summary_table,
        write_charts,
    )

    if args.calls < 1 or args.rate <= 0 or args.duration <= 0:
        raise ConfigError("--calls, --rate and --duration must be positive")
    config = LoadTestConfig(
        calls=args.calls,
        rate=args.rate,
        duration=args.duration,
        audio=args.audio,
        bot=args.bot,
        gateway_url=args.gateway_url,
        app_secret=os.environ.get("WHATSAPP_APP_SECRET"),
        access_token=os.environ.get("WHATSAPP_ACCESS_TOKEN"),
        graph_port=args.graph_port,
        seed=args.seed,
        phases=args.phases,
    )
    report = await run_load_test(config)
    print(summary_table(report))
    if args.report:
        save_report(report, args.report)
        print(f"report: {args.report}")
    if args.charts:
        for path in write_charts(report, args.charts):
            print(f"chart: {path}")
    return 0 if report["ended_cleanly"] == report["calls"] else 1
