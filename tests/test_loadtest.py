"""The load tester, small: a few real calls for a few seconds, plus its refusals."""

from __future__ import annotations

import contextlib
import io
import json
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
    g = report["gateway"]
    assert g["cpu_seconds"] > 0 and g["call_seconds"] > 15 and g["peak_active_calls"] == 3
    assert "response: speech end -> bot" in summary_table(report)
    json.dumps(report)
    charts = write_charts(report, str(tmp_path))
    assert [Path(c).name for c in charts] == ["latency.png", "load.png"]
    assert all(Path(c).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for c in charts)
