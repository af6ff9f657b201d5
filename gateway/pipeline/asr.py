"""Offline keyword spotting for IVR menus, with PocketSphinx's keyword search.

PocketSphinx (``pocketsphinx`` wheel, US English model included) runs a "kws"
search: each keyword is matched against a free phone loop, and fires when it
beats the loop by a threshold. Longer keywords collect more evidence, so the
threshold grows with the keyword's phone count: ``10 ** (threshold_per_phone *
phones)``. The defaults were tuned on the recordings in ``shared/audio``:

* keywords forward/clubs/spades/hearts: every keyword said is found and nothing
  else fires for any ``threshold_per_phone`` from 4.8 to 10.2; 7.4 is the middle;
* 19 words of those recordings (digits, "queen", "meters", "days", ...): 24 of 26
  found, no false alarm (25 at 4.8-5.4; false alarms start below 4.8). Short
  words (2-3 phones: "two", "ten", "no") are the weak spot, and a keyword inside
  a longer one ("four" in "forward") fires with it, which is why overlapping hits
  keep only the longer keyword.

The four-keyword results hold at 1/20 and at 3x (clipping) the recorded level
and with white noise at 20 dB SNR; at 10 dB SNR most keywords are missed.

A decoder holds the acoustic model and only the keywords' pronunciations (~6 MB,
~10 ms to build); decoding runs ~40x faster than real time, off the event loop.
PocketSphinx itself is imported on first use, so a gateway whose bot spots no
keywords never loads it.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..errors import ConfigError, GatewayError
from ..media.pcm import SAMPLE_RATE

if TYPE_CHECKING:
    from ..media.pcm import Int16Array as _PCM

_MS_PER_FRAME: Final = 10  # PocketSphinx analyses 100 frames a second
_PHONE_LOOP_PROBABILITY: Final = 1e-8  # kws_plp; default 0.1 left 4x less margin here

_pronunciations: dict[str, list[str]] = {}  # word -> phone strings, filled as needed
_dict_lock = threading.Lock()


def _pocketsphinx() -> Any:
    """The pocketsphinx module, imported on first use (not at gateway start-up)."""
    import pocketsphinx

    return pocketsphinx


def _model_path(name: str) -> Path:
    return Path(_pocketsphinx().get_model_path(name))


def _lookup(words: set[str]) -> dict[str, list[str]]:
    """Pronunciations of ``words`` from the CMU dictionary; unknown words are left out."""
    with _dict_lock:
        missing = words - _pronunciations.keys()
        if missing:
            found: dict[str, list[str]] = {}
            # One pass over ~135k lines (~40 ms); results are kept for later spotters.
            with _model_path("en-us/cmudict-en-us.dict").open(encoding="utf-8") as f:
                for line in f:
                    head, _, phones = line.partition(" ")
                    word = head.split("(", 1)[0]  # "for(2)" is a variant of "for"
                    if word in missing:
                        found.setdefault(word, []).append(phones.strip())
            _pronunciations.update(found)
        return {w: _pronunciations[w] for w in words if w in _pronunciations}


@dataclass(frozen=True)
class KeywordHit:
    """A keyword heard in an utterance, with where (ms from the utterance start)."""

    keyword: str
    start_ms: int
    end_ms: int


class KeywordSpotter:
    """Finds which of a few keywords (or short phrases) a caller said.

    Build spotters once (at start-up, or once per bot class): construction reads
    the pronunciation dictionary on the calling thread. A spotter decodes one
    utterance at a time; concurrent :meth:`spot` calls queue up.
    """

    def __init__(self, keywords: Sequence[str], *, threshold_per_phone: float = 7.4) -> None:
        if isinstance(keywords, str):
            raise ConfigError("KeywordSpotter takes a list of keywords, not one string")
        phrases = tuple(dict.fromkeys(" ".join(k.lower().split()) for k in keywords))
        if not phrases or "" in phrases:
            raise ConfigError(f"KeywordSpotter needs non-empty keywords, got {list(keywords)!r}")
        if not 0.0 < threshold_per_phone < 20.0:
            raise ConfigError(f"threshold_per_phone must be in (0, 20), not {threshold_per_phone}")
        words = {w for p in phrases for w in p.split()}
        pron = _lookup(words)
        unknown = sorted(words - pron.keys())
        if unknown:
            raise ConfigError(
                f"not in the English pronunciation dictionary: {', '.join(unknown)} "
                "(use another word, or spell a number as words)"
            )
        self.keywords = phrases
        self.threshold_per_phone = threshold_per_phone
        self._pron = pron
        # Phones of each phrase (first pronunciation): its threshold, and which of two
        # overlapping hits explains more of the audio.
        self._phones = {p: sum(len(pron[w][0].split()) for w in p.split()) for p in phrases}
        self._decoder: Any = None  # pocketsphinx.Decoder, built on first use, off the loop
        self._lock = threading.Lock()

    async def spot(self, pcm: _PCM) -> str | None:
        """The keyword said in ``pcm`` (16 kHz mono int16), the earliest if several; or None."""
        hits = await self.detect(pcm)
        return hits[0].keyword if hits else None

    async def detect(self, pcm: _PCM) -> list[KeywordHit]:
        """Every keyword heard in ``pcm``, in order of time."""
        import numpy as np

        if pcm.ndim != 1 or pcm.dtype != np.int16:
            raise GatewayError(f"expected 1-D int16 samples, got {pcm.ndim}-D {pcm.dtype}")
        if len(pcm) == 0:
            return []
        return await asyncio.get_running_loop().run_in_executor(None, self._detect, pcm)

    def _detect(self, pcm: _PCM) -> list[KeywordHit]:
        import numpy as np

        with self._lock:
            decoder = self._decoder or self._build()
            decoder.start_utt()
            # full_utt: normalise with the whole utterance's mean, not a running guess.
            decoder.process_raw(np.ascontiguousarray(pcm, dtype="<i2").tobytes(), full_utt=True)
            decoder.end_utt()
            segments = [
                (seg.word.strip(), seg.start_frame, seg.end_frame) for seg in decoder.seg() or ()
            ]
        hits = [
            KeywordHit(word, start * _MS_PER_FRAME, (end + 1) * _MS_PER_FRAME)
            for word, start, end in segments
            if word in self._phones
        ]
        return self._drop_nested(hits)

    def _drop_nested(self, hits: list[KeywordHit]) -> list[KeywordHit]:
        # "four" fires inside "forward": of overlapping hits keep the longer keyword.
        kept: list[KeywordHit] = []
        for hit in sorted(hits, key=lambda h: (-self._phones[h.keyword], h.start_ms)):
            if all(hit.end_ms <= k.start_ms or hit.start_ms >= k.end_ms for k in kept):
                kept.append(hit)
        return sorted(kept, key=lambda h: h.start_ms)

    def _build(self) -> Any:
        with tempfile.TemporaryDirectory(prefix="kws-") as tmp:
            dict_file = Path(tmp, "keywords.dict")
            kws_file = Path(tmp, "keywords.kws")
            entries = []
            for word, variants in sorted(self._pron.items()):
                entries.append(f"{word} {variants[0]}")
                entries.extend(f"{word}({i}) {v}" for i, v in enumerate(variants[1:], start=2))
            dict_file.write_text("\n".join(entries) + "\n", encoding="utf-8")
            kws_file.write_text(
                "".join(
                    f"{p} /{10.0 ** min(self.threshold_per_phone * self._phones[p], 300):.6e}/\n"
                    for p in self.keywords
                ),
                encoding="utf-8",
            )
            try:
                decoder = _pocketsphinx().Decoder(
                    hmm=str(_model_path("en-us/en-us")),
                    dict=str(dict_file),
                    lm=None,
                    kws=str(kws_file),
                    kws_plp=_PHONE_LOOP_PROBABILITY,
                    samprate=SAMPLE_RATE,
                    loglevel="FATAL",
                )
            except (RuntimeError, ValueError) as exc:
                raise GatewayError(f"PocketSphinx could not start keyword search: {exc}") from exc
        self._decoder = decoder
        return decoder
