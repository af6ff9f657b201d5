"""Finding bot plugins: the ``gateway.bots`` entry-point group."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from ..calls import SessionFactory
from ..errors import BotError, ConfigError
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


TTS_GROUP = "gateway.tts"


def available_voices() -> list[str]:
    """Names of the installed TTS plugins (``gateway.tts`` group), sorted."""
    return sorted({ep.name for ep in entry_points(group=TTS_GROUP)})


def load_tts(name: str | None = None, env: Mapping[str, str] | None = None) -> TTS:
    """Build TTS plugin ``name`` (default ``GATEWAY_TTS``, else ``espeak``) from ``env``.

    A ``gateway.tts`` entry point is a callable taking the settings mapping and
    returning a :class:`~gateway.pipeline.tts.TTS`; Piper, Kokoro or a cloud voice
    plug in this way without touching the gateway.
    """
    env = os.environ if env is None else env
    name = name or env.get("GATEWAY_TTS") or "espeak"
    if name == "espeak":  # the embedded voice, without an entry-point scan
        return EspeakTTS.from_env(env)
    matches = [ep for ep in entry_points(group=TTS_GROUP) if ep.name == name]
    if not matches:
        choices = ", ".join(available_voices()) or "none installed"
        raise ConfigError(f"GATEWAY_TTS: unknown voice plugin {name!r}; have {choices}")
    try:
        factory = matches[0].load()
        return factory(env)  # type: ignore[no-any-return]
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"GATEWAY_TTS: voice plugin {name!r} failed to load: {exc!r}") from exc


@functools.cache
def default_tts() -> TTS:
    """The process-wide TTS: ``GATEWAY_TTS`` (eSpeak NG unless set)."""
    return load_tts()


def session_for(name: str, tts: TTS | None = None) -> SessionFactory:
    """Load bot ``name`` (failing now, at start-up) and return its session factory."""
    factory = load_bot(name)
    # A bot class may check its settings now, so misconfiguration fails at start-up.
    configure = getattr(factory, "configure", None)
    if callable(configure):
        configure()
    return session_factory(factory, tts or default_tts())
