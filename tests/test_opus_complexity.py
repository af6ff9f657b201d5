"""The Opus encoder's complexity as a setting: validated, and what a call really sends."""

from __future__ import annotations

import asyncio

import pytest

from gateway.call import Call
from gateway.cli import main as cli_main
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.media.audio import load_wav
from gateway.media.opus import DEFAULT_COMPLEXITY, OpusEncoder
from gateway.media.playout import PlayoutTrack

from .conftest import AUDIO, answered_call, start_stack, stop_stack
from .test_config import ENV


def test_the_setting_defaults_to_the_encoders_default_and_is_read() -> None:
    assert load_settings(ENV).opus_complexity == DEFAULT_COMPLEXITY
    assert load_settings({**ENV, "GATEWAY_OPUS_COMPLEXITY": "0"}).opus_complexity == 0
    assert (
        load_settings({**ENV, "GATEWAY_OPUS_COMPLEXITY": "3"}, opus_complexity=7).opus_complexity
        == 7
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [("11", "at most 10, got 11"), ("-1", "at least 0, got -1"), ("high", "a whole number")],
)
def test_a_bad_complexity_in_the_environment_is_refused(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"GATEWAY_OPUS_COMPLEXITY must be {message}"):
        load_settings({**ENV, "GATEWAY_OPUS_COMPLEXITY": raw})


@pytest.mark.parametrize("raw", ["11", "-1", "five"])
def test_a_bad_complexity_flag_is_refused(raw: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["serve", "--opus-complexity", raw])
    assert exit_.value.code == 2
    assert f"--opus-complexity: must be a whole number from 0 to 10, got {raw!r}" in (
        capsys.readouterr().err
    )


def test_the_encoder_and_the_track_refuse_a_complexity_libopus_does_not_take() -> None:
    with pytest.raises(ValueError, match="Opus complexity must be 0-10, got 11"):
        OpusEncoder(complexity=11)
    with pytest.raises(ValueError, match="got -1"):
        PlayoutTrack(complexity=-1)


async def test_a_call_sends_what_an_encoder_of_the_set_complexity_makes() -> None:
    speech = load_wav(AUDIO / "cards-001.wav")
    expected = OpusEncoder(complexity=1).encode_pcm(speech)
    # The test could not tell the setting from the default if both encoded alike.
    assert expected != OpusEncoder(complexity=DEFAULT_COMPLEXITY).encode_pcm(speech)
    go = asyncio.Event()

    async def speak(call: Call) -> None:
        await go.wait()
        await call.playout.play(speech).wait()

    stack = await start_stack(session=speak, env={"GATEWAY_OPUS_COMPLEXITY": "1"})
    try:
        user_call = await answered_call(stack)
        assert user_call.inbound is not None
        received: list[tuple[int, int, bytes]] = []
        user_call.inbound.tap = received  # every packet the user's side receives
        go.set()
        async with asyncio.timeout(15):
            while True:
                payloads = [payload for _, _, payload in received]
                if expected[0] in payloads:
                    start = payloads.index(expected[0])
                    if len(payloads) >= start + len(expected):
                        break
                await asyncio.sleep(0.05)
        assert payloads[start : start + len(expected)] == expected
        await user_call.hang_up()
    finally:
        await stop_stack(stack)
