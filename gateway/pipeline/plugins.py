"""Finding bot plugins: the ``gateway.bots`` entry-point group."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping

from ..call import SessionFactory
from ..entrypoints import load_plugin, plugin_names
from ..errors import BotError, ConfigError
from .bot import Bot
from .session import session_factory
from .tts import TTS, EspeakTTS
from .vad import VadConfig

log = logging.getLogger(__name__)

GROUP = "gateway.bots"
BUNDLED_BOTS: Mapping[str, str] = {
    "echo": "bots.echo:EchoBot",
    "ivr": "bots.ivr:IvrBot",
    "agent": "gateway.agent.bot:AgentBot",
}
"""The project's own bots, as ``pyproject.toml`` registers them (a test keeps the two
equal): they load without an entry-point scan."""


def available_bots() -> list[str]:
    """Names of the installed bot plugins, sorted."""
    return plugin_names(GROUP)


def load_bot(name: str) -> Callable[[], Bot]:
    """The factory registered as ``name``; BotError lists the choices when unknown."""
    factory = load_plugin(GROUP, name, kind="bot", error=BotError, bundled=BUNDLED_BOTS)
    if not callable(factory):
        raise BotError(f"bot {name!r} is not callable: {factory!r}")
    return factory  # type: ignore[no-any-return]


TTS_GROUP = "gateway.tts"


def available_voices() -> list[str]:
    """Names of the installed TTS plugins (``gateway.tts`` group), sorted."""
    return plugin_names(TTS_GROUP)


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
    factory = load_plugin(TTS_GROUP, name, kind="GATEWAY_TTS voice", error=ConfigError)
    try:
        return factory(env)  # type: ignore[no-any-return]
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"GATEWAY_TTS: voice plugin {name!r} failed: {exc!r}") from exc


@functools.cache
def default_tts() -> TTS:
    """The process-wide TTS: ``GATEWAY_TTS`` (eSpeak NG unless set)."""
    return load_tts()


def session_for(name: str, tts: TTS | None = None, vad: VadConfig | None = None) -> SessionFactory:
    """Load bot ``name`` (failing now, at start-up) and return its session factory.

    ``vad`` is the turn-taking of its calls (default :class:`VadConfig()`).
    """
    factory = load_bot(name)
    # A bot class may check its settings now, so misconfiguration fails at start-up.
    configure = getattr(factory, "configure", None)
    if callable(configure):
        configure()
    return session_factory(factory, tts or default_tts(), vad)
