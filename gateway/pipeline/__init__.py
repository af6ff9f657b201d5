"""The bot pipeline: turn-taking (VAD), text to speech, keyword spotting."""

from .asr import KeywordHit, KeywordSpotter
from .tts import TTS, EspeakTTS
from .vad import (
    SpeechDiscarded,
    SpeechEnded,
    SpeechStarted,
    VadConfig,
    VadEvent,
    VadSegmenter,
)

__all__ = [
    "TTS",
    "EspeakTTS",
    "KeywordHit",
    "KeywordSpotter",
    "SpeechDiscarded",
    "SpeechEnded",
    "SpeechStarted",
    "VadConfig",
    "VadEvent",
    "VadSegmenter",
]
