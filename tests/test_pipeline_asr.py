"""Keyword spotting with PocketSphinx on the recorded speech in shared/audio."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.errors import ConfigError, GatewayError
from gateway.media.audio import load_wav
from gateway.pipeline.asr import KeywordHit, KeywordSpotter
from gateway.pipeline.vad import SpeechEnded, VadSegmenter

from .loop_checks import ticking_loop

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
MENU = ["forward", "clubs", "spades", "hearts"]

PCM = NDArray[np.int16]


def _load(name: str) -> PCM:
    return load_wav(AUDIO / f"{name}.wav")


@pytest.fixture(scope="module")
def menu() -> KeywordSpotter:
    return KeywordSpotter(MENU)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("goforward", "forward"),  # go forward ten meters
        ("cards-001", "clubs"),  # ten of clubs
        ("cards-002", "clubs"),  # four queen of clubs ("four queen" is close to "forward")
        ("cards-003", "clubs"),  # seven of clubs
        ("cards-004", None),  # five five
        ("numbers", None),  # thirty three four six ninety two
        ("forever-2", None),  # feels like these days go on forever
    ],
)
async def test_spots_the_keyword_said(menu: KeywordSpotter, name: str, expected: str) -> None:
    assert await menu.spot(_load(name)) == expected


async def test_all_keywords_of_a_sentence_in_order(menu: KeywordSpotter) -> None:
    # "eight of spades four of clubs seven of hearts"
    pcm = _load("cards-005")
    assert await menu.spot(pcm) in {"spades", "clubs", "hearts"}
    hits = await menu.detect(pcm)
    assert [h.keyword for h in hits] == ["spades", "clubs", "hearts"]
    assert all(0 <= h.start_ms < h.end_ms <= len(pcm) // 16 for h in hits)
    assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(hits))


async def test_utterances_from_the_vad_are_spotted_the_same(menu: KeywordSpotter) -> None:
    for name, expected in [("goforward", "forward"), ("cards-001", "clubs"), ("forever-2", None)]:
        pcm = _load(name)
        seg = VadSegmenter()
        n = len(pcm) // 320
        events = [e for frame in pcm[: n * 320].reshape(n, 320) for e in seg.push(frame)]
        (utterance,) = [e for e in events + seg.flush() if isinstance(e, SpeechEnded)]
        assert await menu.spot(utterance.pcm) == expected, name


async def test_a_keyword_inside_a_longer_one_does_not_fire_with_it() -> None:
    spotter = KeywordSpotter(["four", "forward"])
    assert [h.keyword for h in await spotter.detect(_load("goforward"))] == ["forward"]
    assert await spotter.spot(_load("cards-002")) == "four"  # four queen of clubs


async def test_multi_word_phrases() -> None:
    spotter = KeywordSpotter(["go forward", "Ten of  Clubs", "seven of hearts"])
    assert spotter.keywords == ("go forward", "ten of clubs", "seven of hearts")
    assert await spotter.spot(_load("goforward")) == "go forward"
    assert await spotter.spot(_load("cards-001")) == "ten of clubs"
    assert await spotter.spot(_load("cards-005")) == "seven of hearts"
    assert await spotter.spot(_load("cards-003")) is None  # seven of clubs


async def test_decoding_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    spotter = KeywordSpotter(MENU)
    decode = spotter._detect
    ran_on: list[str] = []
    async with ticking_loop() as loop:

        def blocking_detect(pcm: PCM) -> list[KeywordHit]:
            ran_on.append(threading.current_thread().name)
            loop.wait_in_worker("decoding")
            return decode(pcm)

        monkeypatch.setattr(spotter, "_detect", blocking_detect)
        assert await spotter.spot(_load("cards-001")) == "clubs"
    assert loop.ticks >= 5
    assert ran_on and ran_on[0] != threading.current_thread().name


async def test_silence_and_empty_audio_give_nothing(menu: KeywordSpotter) -> None:
    assert await menu.spot(np.zeros(0, np.int16)) is None
    assert await menu.spot(np.zeros(16000, np.int16)) is None


async def test_wrong_sample_type_is_refused(menu: KeywordSpotter) -> None:
    with pytest.raises(GatewayError, match="int16"):
        await menu.spot(np.zeros(16000, np.float32))


def test_words_missing_from_the_dictionary_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="not in the English pronunciation dictionary: xyzzyq"):
        KeywordSpotter(["clubs", "go xyzzyq"])


@pytest.mark.parametrize("keywords", [[], [""], ["  "]])
def test_empty_keywords_are_refused(keywords: list[str]) -> None:
    with pytest.raises(ConfigError):
        KeywordSpotter(keywords)


def test_a_single_string_is_refused() -> None:
    with pytest.raises(ConfigError, match="list of keywords"):
        KeywordSpotter("clubs")
