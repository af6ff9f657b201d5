"""Cluster settings, the event encoding between workers, and `--workers` without Redis."""

from __future__ import annotations

import pytest

from gateway.cli import main as cli_main
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.events import (
    CallConnect,
    CallErrorInfo,
    CallStatus,
    CallTerminate,
    Contact,
    Direction,
    PermissionReply,
    decode_event,
    encode_event,
)

from .test_config import ENV


def test_cluster_settings_default_to_single_mode() -> None:
    s = load_settings(ENV)
    assert s.redis_url is None and s.cluster_max_calls == 1000
    assert s.lease_seconds == 10 and s.drain_timeout == 120 and not s.reuse_port
    s = load_settings(
        {
            **ENV,
            "GATEWAY_REDIS_URL": "redis://:hunter2@10.0.0.5:6379/0",
            "GATEWAY_CLUSTER_MAX_CALLS": "500",
            "GATEWAY_LEASE_SECONDS": "5",
            "GATEWAY_DRAIN_TIMEOUT": "0",
        }
    )
    assert s.redis_url is not None and s.redis_url.value.startswith("redis://")
    assert "hunter2" not in repr(s) and "hunter2" not in f"{s.redis_url}"
    assert (s.cluster_max_calls, s.lease_seconds, s.drain_timeout) == (500, 5, 0)
    with pytest.raises(ConfigError, match="GATEWAY_LEASE_SECONDS"):
        load_settings({**ENV, "GATEWAY_LEASE_SECONDS": "1"})


def test_workers_need_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GATEWAY_REDIS_URL", raising=False)
    assert cli_main(["serve", "--workers", "2"]) == 2
    assert "--workers needs GATEWAY_REDIS_URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    "event",
    [
        CallConnect(
            call_id="wacid.1",
            phone_number_id="1",
            from_="155",
            to="156",
            direction=Direction.USER_INITIATED,
            sdp_type="offer",
            sdp="v=0\r\n",
            timestamp=1,
            contact=Contact(wa_id="155", name="Ana"),
        ),
        CallTerminate(
            call_id="wacid.1",
            phone_number_id="1",
            from_="155",
            to="156",
            direction=None,
            status="FAILED",
            timestamp=2,
            errors=(CallErrorInfo(code=138004, message="x"),),
        ),
        CallStatus(call_id="wacid.1", phone_number_id="1", status="RINGING", timestamp=3),
        PermissionReply(
            phone_number_id="1", from_="155", accepted=True, permanent=False, timestamp=4
        ),
    ],
)
def test_events_cross_workers_unchanged(event: object) -> None:
    assert decode_event(encode_event(event)) == event  # type: ignore[arg-type]


def test_garbage_is_not_an_event() -> None:
    with pytest.raises(ValueError):
        decode_event('{"type": "nonsense"}')
