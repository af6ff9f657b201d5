"""Settings, read from the environment (CLI flags override them).

Secrets are held in :class:`Secret` so they never show up in a log line or a repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import ConfigError

DEFAULT_GRAPH_URL = "https://graph.facebook.com/v23.0"

MediaRead = Literal["tick", "arrival"]
"""How calls' media sockets are read: at the frame clock's 20 ms tick, or at each arrival
(gateway.media.tickread)."""
MEDIA_READ_MODES: tuple[MediaRead, ...] = get_args(MediaRead)


class Secret(str):
    """A string that does not print itself."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:  # keeps f-strings and %s in logs safe
        return "***"

    @property
    def value(self) -> str:
        """The real value, for the one place that needs it."""
        return str.__str__(self)


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to run; see the README for each variable."""

    access_token: Secret
    app_secret: Secret
    verify_token: Secret
    phone_number_id: str
    graph_url: str = DEFAULT_GRAPH_URL
    host: str = "127.0.0.1"
    port: int = 8080
    bot: str = "echo"
    max_calls: int = 100
    # Addresses offered as ICE host candidates; empty means every interface.
    media_addresses: tuple[str, ...] = ()
    api_key: Secret | None = None
    # Seconds between the connect webhook and accept; Meta gives up after 30-60 s.
    answer_timeout: float = 20.0
    # Seconds a business-initiated call may ring before we give up on it.
    ring_timeout: float = 45.0
    # Seconds from accept until media must be up, and without inbound RTP after.
    media_timeout: float = 10.0
    media_idle_timeout: float = 20.0
    # Largest webhook body read; a real delivery is a few kB.
    webhook_max_bytes: int = 64 * 1024
    # Where call recordings go; None: calls are not recorded.
    recordings_dir: Path | None = None
    # Cluster mode: the Redis every worker shares (may carry a password, so secret).
    redis_url: Secret | None = None
    # Concurrent calls across the whole cluster (WhatsApp's per-number limit).
    cluster_max_calls: int = 1000
    # Seconds after a worker's last sign of life before others end its calls.
    lease_seconds: float = 10.0
    # Seconds a draining gateway lets calls run on before terminating them.
    drain_timeout: float = 120.0
    # Seconds the closing (after the drain, or a second SIGTERM) may take before the
    # process is ended anyway, with what held it in the log (gateway.shutdown).
    shutdown_timeout: float = 30.0
    # Several worker processes share the listen port (set by ``serve --workers``).
    reuse_port: bool = False
    # Where the durable store lives (call records, journal, dedupe memory, permissions).
    data_dir: str = field(default_factory=lambda: default_data_dir(os.environ))
    # Days ended call records, dedupe keys and permission replies are kept.
    retention_days: int = 30
    # Where call events go (a business backend), their signing key, and how long to retry.
    events_url: str | None = None
    events_secret: Secret | None = None
    events_max_age: float = 3600.0
    # A listener of its own for /metrics (per worker: base port + GATEWAY_WORKER_INDEX).
    metrics_port: int | None = None
    # Judge the caller's speech against the room's other voices (VadConfig.voice_gate).
    vad_voice_gate: bool = True
    # libopus effort (0-10) for the speech sent to callers: CPU against voice quality
    # (gateway.media.opus.DEFAULT_COMPLEXITY, PESQ figures in docs/performance.md).
    opus_complexity: int = 5
    # Calls' media sockets read at the frame clock's tick (one wake-up per 20 ms for all
    # calls; a frame heard up to 20 ms later) or at each arrival (gateway.media.tickread).
    media_read: MediaRead = "tick"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given (non-None) fields replaced, as CLI flags do."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def default_data_dir(env: Mapping[str, str]) -> str:
    """``$XDG_STATE_HOME/wa-voice-gateway`` (``~/.local/state/wa-voice-gateway`` by default)."""
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "wa-voice-gateway")


_REQUIRED = {
    "access_token": "WHATSAPP_ACCESS_TOKEN",
    "app_secret": "WHATSAPP_APP_SECRET",
    "verify_token": "WHATSAPP_VERIFY_TOKEN",
    "phone_number_id": "WHATSAPP_PHONE_NUMBER_ID",
}


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 1, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in _TRUE or raw in _FALSE:
        return raw in _TRUE
    raise ConfigError(f"{name} must be one of {'/'.join(_TRUE + _FALSE)}, got {raw[:40]!r}")


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``env`` (default ``os.environ``).

    Raises ConfigError naming every missing variable.

    ``overrides`` (CLI flags) win over the environment and can supply required values.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    missing = []
    for attr, var in _REQUIRED.items():
        value = overrides.pop(attr, None) or env.get(var)
        if not value:
            missing.append(var)
        else:
            values[attr] = value
    if missing:
        raise ConfigError("missing required environment variable(s): " + ", ".join(missing))
    api_key = overrides.pop("api_key", None) or env.get("GATEWAY_API_KEY")
    events_url = env.get("GATEWAY_EVENTS_URL") or None
    events_secret = env.get("GATEWAY_EVENTS_SECRET") or None
    if events_url is not None:
        if not events_url.startswith(("http://", "https://")):
            raise ConfigError(f"GATEWAY_EVENTS_URL must be an http(s) URL, got {events_url!r}")
        if events_secret is None:
            raise ConfigError("GATEWAY_EVENTS_URL needs GATEWAY_EVENTS_SECRET to sign the events")
    addresses = env.get("GATEWAY_MEDIA_ADDRESSES", "")
    metrics_port = None
    if env.get("GATEWAY_METRICS_PORT"):
        metrics_port = _int(env, "GATEWAY_METRICS_PORT", 0, minimum=0)
        if metrics_port:
            metrics_port += _int(env, "GATEWAY_WORKER_INDEX", 0, minimum=0)
    settings = Settings(
        access_token=Secret(values["access_token"]),
        app_secret=Secret(values["app_secret"]),
        verify_token=Secret(values["verify_token"]),
        phone_number_id=values["phone_number_id"],
        graph_url=env.get("WHATSAPP_GRAPH_URL") or DEFAULT_GRAPH_URL,
        host=env.get("GATEWAY_HOST") or "127.0.0.1",
        port=_int(env, "GATEWAY_PORT", 8080, minimum=0),
        bot=env.get("GATEWAY_BOT") or "echo",
        max_calls=_int(env, "GATEWAY_MAX_CALLS", 100),
        media_addresses=tuple(a.strip() for a in addresses.split(",") if a.strip()),
        api_key=Secret(api_key) if api_key else None,
        ring_timeout=float(_int(env, "GATEWAY_RING_TIMEOUT", 45)),
        answer_timeout=float(_int(env, "GATEWAY_ANSWER_TIMEOUT", 20)),
        media_timeout=float(_int(env, "GATEWAY_MEDIA_TIMEOUT", 10)),
        media_idle_timeout=float(_int(env, "GATEWAY_MEDIA_IDLE_TIMEOUT", 20)),
        webhook_max_bytes=_int(env, "GATEWAY_WEBHOOK_MAX_BYTES", 64 * 1024, minimum=1024),
        recordings_dir=Path(env["GATEWAY_RECORDINGS_DIR"])
        if env.get("GATEWAY_RECORDINGS_DIR")
        else None,
        data_dir=env.get("GATEWAY_DATA_DIR") or default_data_dir(env),
        retention_days=_int(env, "GATEWAY_RETENTION_DAYS", 30),
        events_url=events_url,
        events_secret=Secret(events_secret) if events_secret else None,
        events_max_age=float(_int(env, "GATEWAY_EVENTS_MAX_AGE", 3600)),
        metrics_port=metrics_port,
    )
    redis_url = overrides.pop("redis_url", None) or env.get("GATEWAY_REDIS_URL")
    settings = replace(
        settings,
        redis_url=Secret(redis_url) if redis_url else None,
        cluster_max_calls=_int(env, "GATEWAY_CLUSTER_MAX_CALLS", 1000),
        lease_seconds=float(_int(env, "GATEWAY_LEASE_SECONDS", 10, minimum=2)),
        drain_timeout=float(_int(env, "GATEWAY_DRAIN_TIMEOUT", 120, minimum=0)),
        shutdown_timeout=float(_int(env, "GATEWAY_SHUTDOWN_TIMEOUT", 30)),
        reuse_port=env.get("GATEWAY_REUSE_PORT", "") in ("1", "true", "yes"),
        vad_voice_gate=_bool(env, "GATEWAY_VAD_VOICE_GATE", True),
        opus_complexity=_int(env, "GATEWAY_OPUS_COMPLEXITY", 5, minimum=0, maximum=10),
        media_read=media_read(env.get("GATEWAY_MEDIA_READ") or "tick", "GATEWAY_MEDIA_READ"),
    )
    return settings.with_overrides(**overrides)


def media_read(raw: str, name: str) -> MediaRead:
    """``raw`` as a media read mode; ConfigError naming ``name`` (a variable or flag) if not."""
    for mode in MEDIA_READ_MODES:
        if raw == mode:
            return mode
    raise ConfigError(f"{name} must be {' or '.join(MEDIA_READ_MODES)}, got {raw[:40]!r}")
