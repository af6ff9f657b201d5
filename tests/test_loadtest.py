"""The load tester, small: a few real calls for a few seconds, plus its refusals."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

from gateway.cli import main as cli_main
from gateway.errors import AudioFileError
from gateway.loadtest import (
    LoadTestConfig,
    load_recordings,
    run_load_test,
    summary_table,
    write_charts,
)
from gateway.loadtest.callers import CallStats
from gateway.loadtest.phases import PHASE_STEP, draw_phases
from gateway.loadtest.report import build_report
from gateway.loadtest.target import MAIN_THREAD_SLEEPS, GatewayUnderTest

from .conftest import AUDIO


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad.wav", "header only"),
        ("evil.wav", "no 'data' chunk"),
        ("null.wav", "0 samples"),
    ],
)
def test_unreadable_wavs_are_refused_up_front(name: str, reason: str) -> None:
    with pytest.raises(AudioFileError) as err:
        load_recordings([str(AUDIO / name)])
    assert name in str(err.value) and reason in err.value.reason


def test_a_folder_skips_bad_files_and_says_why() -> None:
    recordings, warnings = load_recordings([str(AUDIO)])
    assert {r.name for r in recordings} >= {"cards-001.wav", "goforward.wav"}
    assert len(warnings) == 3 and all(w.startswith("skipped ") for w in warnings)
    assert all(r.packets and len(r.packets) >= len(r.pcm) // 320 for r in recordings)


def test_cli_refuses_a_bad_file_with_its_reason() -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(["loadtest", "--calls", "1", "--audio", str(AUDIO / "evil.wav")])
    assert code == 2 and "evil.wav" in err.getvalue() and "data" in err.getvalue()


async def test_small_load_test_against_a_gateway_process(tmp_path: Path) -> None:
    config = LoadTestConfig(
        calls=3,
        rate=5,
        duration=6,
        audio=[str(AUDIO / "cards-001.wav"), str(AUDIO / "cards-003.wav")],
        progress=False,
    )
    report = await run_load_test(config)
    assert report["calls"] == 3 and report["ended_cleanly"] == 3, report["failures"]
    m = report["metrics_ms"]
    assert m["setup_media"]["count"] == 3
    # Every caller heard the echo of every utterance.
    assert m["response"]["count"] >= 3
    # The VAD hangover (700 ms) is inside this figure; the gateway adds little on top.
    assert 300 < m["response"]["p50"] < 2000
    assert report["packets"]["received"] > 3 * 5 * 40
    # The echo came back: a good part of the callers' recorded speech was heard again
    # (not all: barge-ins and the callers' next turns cut echoes short).
    pk = report["packets"]
    assert pk["speech_sent"] > 0 and pk["heard_back_ratio"] > 0.25, pk
    assert "heard back:" in summary_table(report)
    g = report["gateway"]
    assert g["cpu_seconds"] > 0 and g["call_seconds"] > 15 and g["peak_active_calls"] == 3
    assert g["wakeups"] > 0 and g["wakeups_per_call_second"] > 0
    # The callers sent at phases of their own (the default), drawn from the seed.
    assert report["config"]["phases"] == "independent"
    phases = [c["phase_ms"] for c in sorted(report["per_call"], key=lambda c: c["index"])]
    assert phases == [p * PHASE_STEP * 1000 for p in draw_phases(3, config.seed)]
    gen = report["generator"]
    assert gen["cpu_ms_per_call_second"] > 0 and gen["wakeups_per_second"] > 0
    assert "response: speech end -> bot" in summary_table(report)
    assert "load generator (independent phases)" in summary_table(report)
    json.dumps(report)
    charts = write_charts(report, str(tmp_path))
    assert [Path(c).name for c in charts] == ["latency.png", "load.png"]
    assert all(Path(c).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for c in charts)


async def test_the_gateways_main_thread_sleeps_are_read_from_outside() -> None:
    # A stand-in process whose main thread sleeps 20 times, then waits for its stdin.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys, time\nfor _ in range(20): time.sleep(0.01)\n"
        "print(flush=True)\nsys.stdin.read()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    gateway = GatewayUnderTest("http://127.0.0.1:1", "s", "t", process)
    try:
        assert process.stdout is not None and process.stdin is not None
        await process.stdout.readline()
        sleeps = gateway.main_thread_sleeps()
        assert sleeps is not None and sleeps >= 20
    finally:
        assert process.stdin is not None
        process.stdin.close()
        await process.wait()
    assert gateway.main_thread_sleeps() is None  # gone
    assert GatewayUnderTest("http://gateway.example", "s", "t").main_thread_sleeps() is None


def test_the_report_gives_wakeups_per_second_and_per_call_second() -> None:
    before = {MAIN_THREAD_SLEEPS: 1000.0, "gateway_call_seconds_total": 0.0}
    after = {MAIN_THREAD_SLEEPS: 1600.0, "gateway_call_seconds_total": 40.0}
    g = build_report({}, [], [], [], before, after, wall=12.0, measured=10.0)["gateway"]
    assert g["wakeups"] == 600 and g["wakeups_per_second"] == 60.0
    assert g["wakeups_per_call_second"] == 15.0
    # A remote gateway: no figure, and the summary says nothing of it.
    g = build_report({}, [], [], [], {}, {}, wall=12.0, measured=10.0)["gateway"]
    assert g["wakeups"] is None and g["wakeups_per_second"] is None


def test_the_report_gives_the_share_of_speech_heard_back() -> None:
    echoed = CallStats(0, speech_packets_sent=100, sound_packets=80)
    silent = CallStats(1, speech_packets_sent=60, sound_packets=0)
    pk = build_report({}, [], [echoed, silent], [], {}, {}, wall=1.0, measured=1.0)["packets"]
    assert pk["speech_sent"] == 160 and pk["sound_received"] == 80
    assert pk["heard_back_ratio"] == 0.5
    # No speech sent (every call failed before talking): no ratio, and no line for it.
    report = build_report({}, [], [CallStats(2)], [], {}, {}, wall=1.0, measured=1.0)
    assert report["packets"]["heard_back_ratio"] is None
    assert "heard back" not in summary_table(report)
