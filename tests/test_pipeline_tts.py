"""The embedded eSpeak NG voice: real synthesis, caching, and staying off the event loop."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.errors import ConfigError, GatewayError
from gateway.pipeline.tts import TTS, EspeakTTS, _resample

from .loop_checks import ticking_loop

PCM = NDArray[np.int16]

# The cache is process-wide and keyed by (text, voice, rate): tests that need a
# first synthesis use a speaking rate no other test uses.


async def _speak(tts: TTS, text: str) -> PCM:
    chunks = [chunk async for chunk in tts.synthesize(text)]
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def _frame_db(pcm: PCM) -> NDArray[np.float64]:
    n = len(pcm) // 320
    power = np.mean(pcm[: n * 320].reshape(n, 320).astype(np.float64) ** 2, axis=1)
    db: NDArray[np.float64] = 10 * np.log10(power / 32768.0**2 + 1e-12)  # dBFS
    return db


async def test_ten_of_clubs_is_speech_of_plausible_length() -> None:
    tts: TTS = EspeakTTS()
    assert tts.sample_rate == 16000
    pcm = await _speak(tts, "ten of clubs")
    assert 0.5 <= len(pcm) / 16000 <= 3.0
    db = _frame_db(pcm)
    # Mostly loud frames (three words, short pauses), nothing clipped to full scale.
    assert np.mean(db > -35) > 0.6
    assert np.max(np.abs(pcm.astype(np.int32))) < 32767
    # Speech energy sits in the voice band, not in DC or at the top of the spectrum.
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / 16000)
    voice_band = spectrum[(freqs > 80) & (freqs < 4000)].sum()
    assert voice_band / spectrum.sum() > 0.8


async def test_longer_text_gives_longer_speech() -> None:
    tts = EspeakTTS()
    short = await _speak(tts, "clubs")
    long = await _speak(tts, "Say a suit: clubs, spades, hearts or diamonds.")
    assert len(long) > 3 * len(short)


async def test_repeated_prompt_is_a_cache_hit() -> None:
    tts = EspeakTTS(rate_wpm=163)
    first = await _speak(tts, "ten of clubs")
    assert (tts.cache_hits, tts.cache_misses) == (0, 1)
    again = await _speak(tts, "ten  of clubs ")  # same words, other spacing
    assert (tts.cache_hits, tts.cache_misses) == (1, 1)
    np.testing.assert_array_equal(first, again)
    # A different rate is a different prompt.
    slower = await _speak(EspeakTTS(rate_wpm=120), "ten of clubs")
    assert len(slower) > len(first)


async def test_cached_audio_cannot_be_corrupted_by_a_caller() -> None:
    tts = EspeakTTS(rate_wpm=164)
    (chunk,) = [c async for c in tts.synthesize("four of spades")]
    with pytest.raises(ValueError):
        chunk[0] = 1


async def test_synthesis_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    tts = EspeakTTS(rate_wpm=166)
    engine = tts._engine
    render = engine.render
    ran_on: list[str] = []
    async with ticking_loop() as loop:

        def blocking_render(text: str, voice: str, rate_wpm: int) -> PCM:
            ran_on.append(threading.current_thread().name)
            loop.wait_in_worker("synthesis")
            return render(text, voice, rate_wpm)

        monkeypatch.setattr(engine, "render", blocking_render)
        pcm = await _speak(tts, "seven of hearts")
    assert loop.ticks >= 5
    assert len(pcm) > 8000
    assert ran_on and ran_on[0].startswith("espeak-ng")
    assert ran_on[0] != threading.current_thread().name


async def test_concurrent_voices_do_not_mix() -> None:
    # One global eSpeak state, several voices at once: each result must be that
    # voice's. eSpeak's output jitters by a few samples between runs (its DSP state
    # carries over), while these voices differ by hundreds of samples.
    voices = ["en-us", "de", "es"]
    alone = {v: len(EspeakTTS(v, 167)._engine.render("ten of clubs", v, 167)) for v in voices}
    assert min(abs(a - b) for a, b in itertools.combinations(alone.values(), 2)) > 300
    results = await asyncio.gather(*[_speak(EspeakTTS(v, 167), "ten of clubs") for v in voices * 2])
    for voice, pcm in zip(voices * 2, results, strict=True):
        assert abs(len(pcm) - alone[voice]) < 100, voice


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
async def test_blank_text_gives_no_audio(text: str) -> None:
    tts = EspeakTTS()
    assert [c async for c in tts.synthesize(text)] == []
    assert tts.cache_misses == 0


async def test_unknown_voice_is_a_config_error() -> None:
    tts = EspeakTTS("xx-nowhere")
    with pytest.raises(ConfigError, match="no voice 'xx-nowhere'"):
        await tts.prepare()
    with pytest.raises(ConfigError):
        await _speak(tts, "hello")


def test_rate_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="words per minute"):
        EspeakTTS(rate_wpm=1000)


async def test_missing_library_is_a_clear_error() -> None:
    path = "/nonexistent/libespeak-ng.so"
    tts = EspeakTTS(library_path=path)
    with pytest.raises(GatewayError, match=re.escape(f"cannot be loaded from {path}")):
        await tts.prepare()
    with pytest.raises(GatewayError, match="cannot be loaded"):
        await _speak(tts, "hello")


def test_resampling_keeps_tones_and_removes_what_16k_cannot_carry() -> None:
    t = np.arange(22050) / 22050
    tone = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    out = _resample(tone, 22050)
    assert abs(len(out) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 1000) < 5
    # 10 kHz is above the new Nyquist frequency: it must not alias to 6 kHz.
    high = (8000 * np.sin(2 * np.pi * 10000 * t)).astype(np.int16)
    rest = _resample(high, 22050).astype(np.float64)
    assert np.sqrt(np.mean(rest[100:-100] ** 2)) < 0.01 * 8000
