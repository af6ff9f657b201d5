"""The ``gateway`` command line: its commands, their options and ``--help``.

The environment the commands read is listed in every ``--help`` (:data:`ENV_HELP`);
flags override it.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import MEDIA_READ_MODES, MediaRead, media_read
from ..errors import ConfigError

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


def build_parser() -> argparse.ArgumentParser:
    """The ``gateway`` command's arguments, its commands' and their ``--help``."""
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
    _add_serving(serve, max_calls="concurrent call limit")
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
    _add_serving(cluster, max_calls="calls per worker")
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


def _add_serving(parser: argparse.ArgumentParser, *, max_calls: str) -> None:
    """The options of a command that serves calls (``serve``, ``cluster``)."""
    parser.add_argument("--host", help="listen address (GATEWAY_HOST)")
    parser.add_argument("--port", type=int, help="listen port (GATEWAY_PORT)")
    parser.add_argument("--bot", help="bot plugin to run on each call (GATEWAY_BOT)")
    parser.add_argument("--max-calls", type=int, help=f"{max_calls} (GATEWAY_MAX_CALLS)")
    _add_complexity(parser)
    _add_media_read(parser)


def serving_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options :func:`_add_serving` added, by setting name (None: not given)."""
    return {
        "host": args.host,
        "port": args.port,
        "bot": args.bot,
        "max_calls": args.max_calls,
        "opus_complexity": args.opus_complexity,
        "media_read": args.media_read,
    }


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
