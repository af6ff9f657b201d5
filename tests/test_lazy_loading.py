"""A gateway loads only what its bot and settings use: no speech models (pocketsphinx,
eSpeak NG, Whisper) nor LLM client for the echo bot at start-up, no numpy for a call
the echo bot answers, and no cluster, API, dashboard, recording or event-outbox code
unless configured."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.loadtest import LoadTestConfig, run_load_test

from .conftest import AUDIO

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


def run_fresh(script: str, data_dir: Path, *args: str) -> list[str]:
    """Run ``script`` in a fresh interpreter with a gateway's settings; its output lines."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**ENV, "PATH": "/usr/bin:/bin", "GATEWAY_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _probe(bot: str, data_dir: Path) -> list[str]:
    return run_fresh(PROBE, data_dir, bot)


def test_echo_gateway_loads_no_speech_models(tmp_path: Path) -> None:
    assert _probe("echo", tmp_path) == ["started: []", "bot made: []"]


def test_ivr_loads_pocketsphinx_with_its_first_call_not_at_start_up(tmp_path: Path) -> None:
    # The bot, made for a call, reads the pronunciation dictionary (pocketsphinx's
    # package); the recognizer itself waits for the first utterance.
    assert _probe("ivr", tmp_path) == ["started: []", "bot made: ['pocketsphinx']"]


# `gateway serve` exactly as the console script runs it; when it has drained and
# closed (SIGTERM), what the process imported goes to PROBE_MODULES.
# Modules made by LazyLoader that never ran (gateway/lazy_imports.py) are "deferred".
# Threads Python did not start (numpy's OpenBLAS pool) outlive `main`: "native threads".
SERVE = textwrap.dedent(
    """
    import ctypes, json, os, sys, threading, time
    from gateway.cli import main

    def native_threads():
        # A joined thread can linger in /proc for a moment after Python let it go:
        # the fewest seen over a second (OpenBLAS's pool would stay throughout).
        fewest = None
        for _ in range(20):
            n = len(os.listdir("/proc/self/task")) - threading.active_count()
            fewest = n if fewest is None else min(fewest, n)
            time.sleep(0.05)
        return fewest

    def blocks_mapped():
        # Of 40 blocks of two seconds of speech (64 KB), how many glibc mapped on
        # their own (gateway/heap.py: map_large_allocations, at serve's start-up).
        class Info(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
                "keepcost").split()]
        mallinfo2 = ctypes.CDLL(None).mallinfo2
        mallinfo2.restype = Info
        before = mallinfo2().hblks
        blocks = [bytearray(64000) for _ in range(40)]
        return mallinfo2().hblks - before

    code = main(["serve"])
    modules = {name: type(module).__name__ for name, module in sys.modules.items() if module}
    with open(os.environ["PROBE_MODULES"], "w") as out:
        json.dump(
            {
                "ran": sorted(n for n, kind in modules.items() if kind != "_LazyModule"),
                "deferred": sorted(n for n, kind in modules.items() if kind == "_LazyModule"),
                "native threads": native_threads(),
                "mime tables": getattr(sys.modules.get("mimetypes"), "_db", None) is not None,
                "big blocks mapped": blocks_mapped(),
            },
            out,
        )
    sys.exit(code)
    """
)

# What a single-process gateway with the echo bot and default settings never runs.
NOT_FOR_ECHO = (
    "redis",  # cluster mode (GATEWAY_REDIS_URL)
    "gateway.cluster",
    "gateway.api",  # GATEWAY_API_KEY
    "gateway.dashboard",
    "gateway.recording",  # GATEWAY_RECORDINGS_DIR
    "gateway.outbox",  # GATEWAY_EVENTS_URL
    "gateway.agent",  # the agent bot
    "gateway.stt",
    "openai",
    "faster_whisper",
    "ctranslate2",
    "pocketsphinx",
    "gateway.sandbox",  # the demo and the tests' WhatsApp side
    "gateway.loadtest",
    "anyio._backends",  # httpx's own transport's (the gateway's clients use aiohttp's)
    "click",  # httpx's command-line client
    "pygments",
    # The PCM path (decode, VAD, utterance, echo, playout, encode) is array('h') and
    # memoryviews (gateway/media/pcm.py); numpy loads only for WAV files, TTS, ASR,
    # a bot reading Utterance.pcm. Covers numpy.ma (once the loop-lag quantiles').
    "numpy",
    # Entry points are scanned only for plugins not bundled with the project, and
    # webrtcvad's module (its version lookup) is bypassed for its extension: no
    # importlib.metadata, with its zipfile, csv and email parser (0.9 MiB).
    "importlib.metadata",
    "webrtcvad",
    # aioice's mDNS (peers' .local candidates; Meta's are public): loaded, not run
    "dns.message",
    "dns.zone",
    "dns.name",
)


async def test_serve_with_the_echo_bot_imports_only_what_it_runs(tmp_path: Path) -> None:
    modules_file = tmp_path / "modules.json"
    report = await run_load_test(
        LoadTestConfig(
            calls=1,
            rate=1,
            duration=3,
            audio=[str(AUDIO / "cards-001.wav")],
            progress=False,
            server_command=(sys.executable, "-c", SERVE),
            gateway_env={"PROBE_MODULES": str(modules_file)},
        )
    )
    # A real call went through that process: answered, echoed, ended.
    assert report["ended_cleanly"] == 1, report["failures"]
    assert report["metrics_ms"]["response"]["count"] >= 1
    probe = json.loads(modules_file.read_text())
    modules = probe["ran"]
    assert "gateway.calls" in modules and "bots.echo" in modules
    assert "aioice.mdns" in modules and "dns.message" in probe["deferred"]
    assert not probe["mime tables"]  # /etc/mime.types was not read (gateway/lazy_imports.py)
    assert probe["native threads"] == 0  # no BLAS thread pool (and no numpy at all)
    assert probe["big blocks mapped"] >= 30  # glibc's default would map none of them
    loaded = [
        name
        for name in modules
        for unwanted in NOT_FOR_ECHO
        if name == unwanted or name.startswith(unwanted + ".")
    ]
    assert loaded == []


# aioice's mDNS with dnspython deferred (gateway/lazy_imports.py): its modules wait
# until a peer's .local candidate needs resolving, then run and resolve it.
MDNS = textwrap.dedent(
    """
    import asyncio, sys
    import gateway, aiortc
    from aioice import mdns

    print(type(sys.modules["dns.zone"]).__name__)

    async def main():
        try:
            publisher = await mdns.create_mdns_protocol()
        except OSError as exc:
            print("no multicast:", exc)
            return
        resolver = await mdns.create_mdns_protocol()
        await publisher.publish("gateway-lazy-test.local", "127.0.0.1")
        print(await resolver.resolve("gateway-lazy-test.local", timeout=5))
        await publisher.close()
        await resolver.close()

    asyncio.run(main())
    print(type(sys.modules["dns.zone"]).__name__)
    """
)


def test_mdns_loads_dnspython_when_a_local_candidate_is_resolved() -> None:
    result = subprocess.run(
        [sys.executable, "-c", MDNS], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if lines[1].startswith("no multicast"):
        pytest.skip(lines[1])
    assert lines == ["_LazyModule", "127.0.0.1", "module"]


# aiohttp's static files get the same types whether or not the gateway kept the system's
# MIME tables from loading at import; mimetypes' own functions still load them when used.
MIME = textwrap.dedent(
    """
    import json, sys
    if sys.argv[1] == "gateway":
        import gateway
    import mimetypes
    from aiohttp.web_fileresponse import CONTENT_TYPES
    names = ["a.html", "a.js", "a.css", "a.svg", "a.png", "a.json", "a.wav", "a.ogg", "a.ico",
             "a.woff2", "a.map", "a.txt", "a.gz", "a.webmanifest", "a.unknownext"]
    loaded_at_import = mimetypes._db is not None
    types = [CONTENT_TYPES.guess_type(name) for name in names]
    module = [mimetypes.guess_type(name) for name in names]
    print(json.dumps([loaded_at_import, types, module, mimetypes._db is not None]))
    """
)


def test_aiohttp_serves_the_same_types_without_the_system_mime_tables_at_import() -> None:
    runs = {}
    for mode in ("gateway", "plain"):
        result = subprocess.run(
            [sys.executable, "-c", MIME, mode], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        runs[mode] = json.loads(result.stdout)
    with_gateway, plain = runs["gateway"], runs["plain"]
    assert (with_gateway[0], plain[0]) == (False, True)  # the 0.4 MiB load at import, skipped
    assert with_gateway[1] == plain[1]  # aiohttp's own table: the same answers
    assert with_gateway[2] == plain[2] and with_gateway[3]  # loaded at mimetypes' first use
