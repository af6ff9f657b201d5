"""A gateway loads only what its bot uses: no speech models (pocketsphinx, eSpeak NG,
Whisper) nor LLM client for the echo bot at start-up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Runs in a fresh interpreter: this test process has long imported everything.
PROBE = textwrap.dedent(
    """
    import asyncio, sys
    from gateway.app import Gateway
    from gateway.config import load_settings
    from gateway.pipeline.plugins import load_bot, session_for

    def loaded():
        maps = open("/proc/self/maps").read()
        return sorted(
            {"pocketsphinx", "openai", "faster_whisper", "ctranslate2"} & set(sys.modules)
            | {name for name in ("libespeak", "libpocketsphinx") if name in maps}
        )

    async def main():
        settings = load_settings(port=0, bot=sys.argv[1])
        gateway = Gateway(settings, session=session_for(settings.bot), sessions=session_for)
        await gateway.start()
        print("started:", loaded())
        await gateway.aclose()
        bot = load_bot(sys.argv[1])()
        print("bot made:", loaded())

    asyncio.run(main())
    """
)

ENV = {
    "WHATSAPP_ACCESS_TOKEN": "t" * 20,
    "WHATSAPP_APP_SECRET": "s" * 20,
    "WHATSAPP_VERIFY_TOKEN": "v" * 10,
    "WHATSAPP_PHONE_NUMBER_ID": "106540352242922",
    "GATEWAY_HOST": "127.0.0.1",
    "GATEWAY_MEDIA_ADDRESSES": "127.0.0.1",
}


def _probe(bot: str, data_dir: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, bot],
        env={**ENV, "PATH": "/usr/bin:/bin", "GATEWAY_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_echo_gateway_loads_no_speech_models(tmp_path: Path) -> None:
    assert _probe("echo", tmp_path) == ["started: []", "bot made: []"]


def test_ivr_loads_pocketsphinx_with_its_first_call_not_at_start_up(tmp_path: Path) -> None:
    # The bot, made for a call, reads the pronunciation dictionary (pocketsphinx's
    # package); the recognizer itself waits for the first utterance.
    assert _probe("ivr", tmp_path) == ["started: []", "bot made: ['pocketsphinx']"]
