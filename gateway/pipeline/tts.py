"""Text to speech: the :class:`TTS` plugin interface and the embedded eSpeak NG voice.

:class:`EspeakTTS` needs nothing but the ``espeakng-loader`` wheel, which ships
``libespeak-ng.so`` and its data, so a fresh machine can talk offline. eSpeak NG
keeps its state in process globals and is not thread-safe: every call into it
goes through one lock on one dedicated thread, never the event loop. Synthesis
runs ~1000x faster than real time, so a prompt is rendered whole, resampled from
22050 Hz to the pipeline's 16 kHz, and cached: a repeated IVR prompt costs a dict
lookup. numpy (the rendered prompts' type) is imported with the first prompt.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final, Protocol

import av

from ..errors import ConfigError, GatewayError
from ..media.pcm import SAMPLE_RATE

if TYPE_CHECKING:
    from ..media.pcm import Int16Array as _PCM


class TTS(Protocol):
    """Turns text into 16 kHz mono int16 audio, streamed in chunks of any length."""

    @property
    def sample_rate(self) -> int:
        """Always 16000."""
        ...

    def synthesize(self, text: str) -> AsyncIterator[_PCM]:
        """Yield the speech for ``text``; nothing at all for blank text.

        Implement it as ``async def synthesize(...)`` with ``yield``; do the heavy
        work off the event loop. Chunks may be read-only: copy before changing them.
        """
        ...


# --- eSpeak NG through ctypes (speak_lib.h) --------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000  # else a missing data dir makes the library exit()
_CHARS_UTF8: Final = 1
_POS_CHARACTER: Final = 1
_PARAM_RATE: Final = 1
_EE_OK: Final = 0
_EE_NOT_FOUND: Final = 2
_RATE_RANGE: Final = (80, 450)  # espeakRATE_MINIMUM, espeakRATE_MAXIMUM

# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events)
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _resample(pcm: _PCM, rate: int) -> _PCM:
    """``rate`` Hz to 16 kHz with libswresample (band-limited, no aliasing)."""
    import numpy as np

    if rate == SAMPLE_RATE or len(pcm) == 0:
        return pcm
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    out = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in out]).astype(np.int16, copy=False)


class _Engine:
    """One loaded libespeak-ng: its lock, its thread, and the prompts it has rendered."""

    def __init__(self, library_path: str, data_path: str | None, cache_bytes: int) -> None:
        self.library_path = library_path
        self.data_path = data_path
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak-ng")
        self.lock = threading.Lock()
        self.cache: OrderedDict[tuple[str, str, int], _PCM] = OrderedDict()
        self.cache_bytes = cache_bytes
        self._cached = 0
        self._lib: ctypes.CDLL | None = None
        self._rate = 0
        self._failure: str | None = None  # why loading failed; it will not get better
        self._settings: tuple[str, int] | None = None
        self._chunks: list[bytes] = []
        # Kept on self: ctypes does not keep the C callback alive.
        self._callback = _SynthCallback(self._on_audio)

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], n: int, events: int) -> int:
        if n > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, n * 2))
        return 0  # continue

    def _load(self) -> ctypes.CDLL:
        if self._lib is not None:
            return self._lib
        if self._failure is not None:
            raise GatewayError(self._failure)
        try:
            lib = ctypes.CDLL(self.library_path)
        except OSError as exc:
            self._failure = f"eSpeak NG library cannot be loaded from {self.library_path}: {exc}"
            raise GatewayError(self._failure) from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,  # text
            ctypes.c_size_t,  # size
            ctypes.c_uint,  # position
            ctypes.c_int,  # position_type
            ctypes.c_uint,  # end_position
            ctypes.c_uint,  # flags
            ctypes.POINTER(ctypes.c_uint),  # unique_identifier
            ctypes.c_void_p,  # user_data
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        path = self.data_path.encode() if self.data_path else None
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:  # 0 when the data directory is unusable
            self._failure = (
                f"eSpeak NG failed to initialize: no usable espeak-ng-data at "
                f"{self.data_path or 'its built-in path'}"
            )
            raise GatewayError(self._failure)
        lib.espeak_SetSynthCallback(self._callback)
        self._lib, self._rate = lib, rate
        return lib

    def _configure(self, lib: ctypes.CDLL, voice: str, rate_wpm: int) -> None:
        if self._settings == (voice, rate_wpm):
            return
        status = lib.espeak_SetVoiceByName(voice.encode())
        if status == _EE_NOT_FOUND:
            raise ConfigError(
                f"eSpeak NG has no voice {voice!r} (e.g. 'en-us', 'en', 'es', 'pt-br')"
            )
        if status != _EE_OK:
            # With a voice but no phoneme data, the data directory is the problem.
            raise GatewayError(
                f"eSpeak NG cannot set voice {voice!r} (status {status}); "
                f"is its data directory usable? ({self.data_path or 'built-in path'})"
            )
        # The rate belongs to the voice: setting a voice resets it.
        lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
        self._settings = (voice, rate_wpm)

    def check(self, voice: str, rate_wpm: int) -> None:
        """Load the library and select the voice (blocking; run it on :attr:`executor`)."""
        with self.lock:
            self._configure(self._load(), voice, rate_wpm)

    def render(self, text: str, voice: str, rate_wpm: int) -> _PCM:
        """Synthesize ``text`` at 16 kHz (blocking; run it on :attr:`executor`)."""
        with self.lock:
            lib = self._load()
            self._configure(lib, voice, rate_wpm)
            data = text.replace("\0", " ").encode() + b"\0"
            self._chunks = []
            try:
                status = lib.espeak_Synth(
                    data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                )
                raw = b"".join(self._chunks)
            finally:
                self._chunks = []
            if status != _EE_OK:
                raise GatewayError(f"eSpeak NG synthesis failed (status {status})")
            import numpy as np

            native = np.frombuffer(raw, dtype=np.int16)
            return _resample(native, self._rate)

    def remember(self, key: tuple[str, str, int], pcm: _PCM) -> None:
        """Cache ``pcm`` (event-loop thread only), evicting the least recently used."""
        if pcm.nbytes > self.cache_bytes or key in self.cache:
            return
        pcm.flags.writeable = False  # shared by every caller from now on
        self.cache[key] = pcm
        self._cached += pcm.nbytes
        while self._cached > self.cache_bytes:
            _, old = self.cache.popitem(last=False)
            self._cached -= old.nbytes


_engines: dict[str, _Engine] = {}
_engines_lock = threading.Lock()


def _engine(library_path: str | None, data_path: str | None) -> _Engine:
    if library_path is None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise GatewayError(
                "eSpeak NG is not installed: install the espeakng-loader package"
            ) from exc
        library_path = str(espeakng_loader.get_library_path())
        if data_path is None:
            data_path = str(espeakng_loader.get_data_path())
    with _engines_lock:
        engine = _engines.get(library_path)
        if engine is None:
            engine = _engines[library_path] = _Engine(library_path, data_path, 32 * 2**20)
    if engine.data_path != data_path:
        raise ConfigError(
            f"eSpeak NG at {library_path} already uses data {engine.data_path!r}, "
            f"not {data_path!r}: the library holds one data directory per process"
        )
    return engine


class EspeakTTS:
    """The embedded offline voice: eSpeak NG from the ``espeakng-loader`` wheel.

    ``library_path``/``data_path`` point at another libespeak-ng build (``data_path``
    None then means its built-in location). Loading errors surface on the first
    :meth:`synthesize`, or on :meth:`prepare` for a check at start-up.
    """

    sample_rate: Final = SAMPLE_RATE

    def __init__(
        self,
        voice: str = "en-us",
        rate_wpm: int = 170,
        *,
        library_path: str | None = None,
        data_path: str | None = None,
    ) -> None:
        if not _RATE_RANGE[0] <= rate_wpm <= _RATE_RANGE[1]:
            raise ConfigError(
                f"eSpeak NG speaks {_RATE_RANGE[0]}-{_RATE_RANGE[1]} words per minute, "
                f"not {rate_wpm}"
            )
        self.voice = voice
        self.rate_wpm = rate_wpm
        self._engine = _engine(library_path, data_path)
        self.cache_hits = 0
        """Prompts served from the cache."""
        self.cache_misses = 0
        """Prompts synthesized."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EspeakTTS:
        """The ``espeak`` entry point: ``GATEWAY_TTS_VOICE`` and ``GATEWAY_TTS_RATE`` (wpm)."""
        raw_rate = env.get("GATEWAY_TTS_RATE") or "170"
        try:
            rate = int(raw_rate)
        except ValueError:
            raise ConfigError(
                f"GATEWAY_TTS_RATE must be words per minute, not {raw_rate!r}"
            ) from None
        return cls(env.get("GATEWAY_TTS_VOICE") or "en-us", rate)

    async def prepare(self) -> None:
        """Load the library and check the voice now, off the event loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._engine.executor, self._engine.check, *self._settings())

    def _settings(self) -> tuple[str, int]:
        return self.voice, self.rate_wpm

    async def synthesize(self, text: str) -> AsyncIterator[_PCM]:
        """Yield the speech for ``text`` as one read-only chunk (none for blank text)."""
        text = " ".join(text.split())  # whitespace variants are the same prompt
        if not text:
            return
        engine = self._engine
        key = (text, self.voice, self.rate_wpm)
        pcm = engine.cache.get(key)
        if pcm is not None:
            engine.cache.move_to_end(key)
            self.cache_hits += 1
        else:
            loop = asyncio.get_running_loop()
            pcm = await loop.run_in_executor(engine.executor, engine.render, *key)
            self.cache_misses += 1
            engine.remember(key, pcm)
        if len(pcm):
            yield pcm
