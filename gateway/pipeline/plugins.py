"""Finding bot plugins: the ``gateway.bots`` entry-point group."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from importlib.metadata import entry_points

from ..calls import SessionFactory
from ..errors import BotError
from .bot import Bot
from .session import session_factory
from .tts import TTS, EspeakTTS

log = logging.getLogger(__name__)

GROUP = "gateway.bots"


def available_bots() -> list[str]:
    """Names of the installed bot plugins, sorted."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def load_bot(name: str) -> Callable[[], Bot]:
    """The factory registered as ``name``; BotError lists the choices when unknown."""
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        choices = ", ".join(available_bots()) or "none installed"
        raise BotError(f"unknown bot {name!r}; available: {choices}")
    try:
        factory = matches[0].load()
    except Exception as exc:  # a plugin's import error is the plugin's problem, say so
        raise BotError(f"bot {name!r} failed to load: {exc!r}") from exc
    if not callable(factory):
        raise BotError(f"bot {name!r} is not callable: {factory!r}")
    return factory  # type: ignore[no-any-return]


@functools.cache
def default_tts() -> TTS:
    """The process-wide embedded TTS (eSpeak NG)."""
    return EspeakTTS()


def session_for(name: str, tts: TTS | None = None) -> SessionFactory:
    """Load bot ``name`` (failing now, at start-up) and return its session factory."""
    factory = load_bot(name)
    return session_factory(factory, tts or default_tts())
