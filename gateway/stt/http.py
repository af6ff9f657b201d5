"""Any OpenAI-compatible ``POST /v1/audio/transcriptions`` endpoint as a transcriber.

faster-whisper-server, vLLM, LocalAI and OpenAI itself speak it: a multipart
upload of a WAV file and a ``model`` name, answered with ``{"text": ...}``. The
official ``openai`` SDK does the HTTP. Settings: ``GATEWAY_STT_URL`` (base URL,
e.g. ``http://127.0.0.1:8000/v1``), ``GATEWAY_STT_MODEL`` (default
``whisper-1``), ``GATEWAY_STT_API_KEY`` (optional), ``GATEWAY_STT_TIMEOUT``
(seconds, default 10).
"""

from __future__ import annotations

import io
import wave
from collections.abc import Mapping

import openai

from ..config import Secret
from ..errors import ConfigError, TranscriptionError
from . import PCM, SAMPLE_RATE, Transcript


def wav_bytes(pcm: PCM) -> bytes:
    """16 kHz mono int16 PCM as a WAV file in memory."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2", copy=False).tobytes())
    return buf.getvalue()


class OpenAITranscriber:
    """Transcribes through a remote endpoint; the process does no speech work itself."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "whisper-1",
        api_key: Secret | None = None,
        timeout: float = 10.0,
        language: str | None = "en",
    ) -> None:
        self.model = model
        self.language = language
        # The SDK insists on a key; servers that need none ignore the header.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key.value if api_key else "none",
            timeout=timeout,
            max_retries=0,  # a caller is waiting: fail fast, the agent apologizes
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OpenAITranscriber:
        """The ``openai`` entry point."""
        url = env.get("GATEWAY_STT_URL")
        if not url:
            raise ConfigError("GATEWAY_STT_URL must be set for GATEWAY_STT=openai")
        key = env.get("GATEWAY_STT_API_KEY")
        try:
            timeout = float(env.get("GATEWAY_STT_TIMEOUT") or 10.0)
        except ValueError:
            raise ConfigError("GATEWAY_STT_TIMEOUT must be a number of seconds") from None
        return cls(
            url,
            model=env.get("GATEWAY_STT_MODEL") or "whisper-1",
            api_key=Secret(key) if key else None,
            timeout=timeout,
        )

    async def transcribe(self, pcm: PCM) -> Transcript:
        """Upload the utterance as WAV; the endpoint's text comes back."""
        if len(pcm) < SAMPLE_RATE // 10:
            return Transcript("", None)
        try:
            result = await self._client.audio.transcriptions.create(
                file=("utterance.wav", wav_bytes(pcm), "audio/wav"),
                model=self.model,
                response_format="json",
                language=self.language or openai.omit,
            )
        except openai.APIStatusError as exc:
            raise TranscriptionError(
                f"transcription endpoint answered HTTP {exc.status_code}: {str(exc)[:200]}"
            ) from exc
        except openai.APIError as exc:
            raise TranscriptionError(f"transcription endpoint failed: {exc}") from exc
        return Transcript(result.text.strip(), None)

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()
