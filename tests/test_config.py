"""Settings: required variables named when missing, flags win, secrets never print."""

from __future__ import annotations

import logging

import pytest

from gateway.cli import main as cli_main
from gateway.config import Secret, load_settings
from gateway.errors import ConfigError

ENV = {
    "WHATSAPP_ACCESS_TOKEN": "EAAG-very-secret",
    "WHATSAPP_APP_SECRET": "app-secret-value",
    "WHATSAPP_VERIFY_TOKEN": "verify-me",
    "WHATSAPP_PHONE_NUMBER_ID": "106540352242922",
}


def test_missing_variables_are_named() -> None:
    env = dict(ENV)
    del env["WHATSAPP_APP_SECRET"], env["WHATSAPP_PHONE_NUMBER_ID"]
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert "WHATSAPP_APP_SECRET" in str(err.value) and "WHATSAPP_PHONE_NUMBER_ID" in str(err.value)


def test_defaults_and_flag_overrides() -> None:
    s = load_settings(ENV)
    assert (s.host, s.port, s.bot, s.max_calls) == ("127.0.0.1", 8080, "echo", 100)
    assert s.graph_url == "https://graph.facebook.com/v23.0" and s.api_key is None
    s = load_settings({**ENV, "GATEWAY_PORT": "9000", "GATEWAY_BOT": "ivr"}, port=9100)
    assert (s.port, s.bot) == (9100, "ivr")
    assert (s.answer_timeout, s.ring_timeout) == (20, 45)
    s = load_settings({**ENV, "GATEWAY_RING_TIMEOUT": "30", "GATEWAY_ANSWER_TIMEOUT": "10"})
    assert (s.answer_timeout, s.ring_timeout) == (10, 30)
    with pytest.raises(ConfigError, match="GATEWAY_MAX_CALLS must be a whole number"):
        load_settings({**ENV, "GATEWAY_MAX_CALLS": "many"})


def test_secrets_never_show_in_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings(ENV)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %s / %r / %s", s, s, s.access_token)
    for secret in ("EAAG-very-secret", "app-secret-value", "verify-me"):
        assert secret not in caplog.text
        assert secret not in repr(s)
    assert s.access_token.value == "EAAG-very-secret"
    assert f"{Secret('x')}" == "***"


def test_serve_without_settings_fails_with_the_variable_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    assert cli_main(["serve"]) == 2
    assert "WHATSAPP_ACCESS_TOKEN" in capsys.readouterr().err


def test_help_lists_commands_and_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli_main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for word in ("serve", "sandbox", "call", "loadtest", "bots", "WHATSAPP_APP_SECRET"):
        assert word in out


def test_vad_voice_gate_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_settings(ENV).vad_voice_gate is True
    for raw, value in (("1", True), ("yes", True), ("ON", True), ("0", False), ("false", False)):
        assert load_settings({**ENV, "GATEWAY_VAD_VOICE_GATE": raw}).vad_voice_gate is value
    with pytest.raises(ConfigError, match="GATEWAY_VAD_VOICE_GATE must be one of"):
        load_settings({**ENV, "GATEWAY_VAD_VOICE_GATE": "maybe"})
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    assert "GATEWAY_VAD_VOICE_GATE" in capsys.readouterr().out
