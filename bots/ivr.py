"""The IVR bot: a menu of prompts, chosen by DTMF keys or spoken keywords.

The menu is a TOML file (``bots/menu.toml`` by default, or ``GATEWAY_IVR_MENU``);
spoken keywords are recognized offline with pocketsphinx.
"""

from __future__ import annotations

import functools
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import BotError
from gateway.pipeline.asr import KeywordSpotter
from gateway.pipeline.bot import BaseBot, CallControl, Utterance

log = logging.getLogger(__name__)

DEFAULT_MENU = Path(__file__).with_name("menu.toml")


@dataclass(frozen=True)
class Option:
    """One way out of a menu: a key and/or keywords, and what happens."""

    dtmf: str | None
    keywords: tuple[str, ...]
    goto: str | None = None
    say: str | None = None
    action: str | None = None  # "repeat" | "hangup"


@dataclass(frozen=True)
class Menu:
    """A prompt and its options."""

    name: str
    prompt: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class IvrConfig:
    """A whole IVR: its menus and how patient it is."""

    start: str
    menus: dict[str, Menu]
    timeout_seconds: float = 8.0
    max_retries: int = 2
    goodbye: str = "Goodbye."
    not_understood: str = "Sorry, I did not get that."

    @property
    def keywords(self) -> list[str]:
        """Every spoken keyword of every menu."""
        return sorted({k for m in self.menus.values() for o in m.options for k in o.keywords})


def load_menu(path: str | Path) -> IvrConfig:
    """Read and check a menu file; BotError says what is wrong and where."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BotError(f"IVR menu {path}: {exc}") from exc
    return parse_menu(data, str(path))


def parse_menu(data: dict[str, Any], where: str = "menu") -> IvrConfig:
    """Build an IvrConfig from parsed TOML."""
    settings = data.get("ivr", {})
    menus: dict[str, Menu] = {}
    for name, raw in (data.get("menus") or {}).items():
        if not isinstance(raw, dict) or not isinstance(raw.get("prompt"), str):
            raise BotError(f"{where}: menu {name!r} needs a prompt")
        options = []
        for i, opt in enumerate(raw.get("options") or []):
            option = Option(
                dtmf=opt.get("dtmf"),
                keywords=tuple(k.lower() for k in opt.get("keywords", [])),
                goto=opt.get("goto"),
                say=opt.get("say"),
                action=opt.get("action"),
            )
            chosen = [x for x in (option.goto, option.say, option.action) if x is not None]
            if len(chosen) != 1:
                raise BotError(f"{where}: menu {name!r} option {i}: give one of goto, say, action")
            if option.action not in (None, "repeat", "hangup"):
                raise BotError(
                    f"{where}: menu {name!r} option {i}: unknown action {option.action!r}"
                )
            if option.dtmf is None and not option.keywords:
                raise BotError(f"{where}: menu {name!r} option {i}: needs dtmf or keywords")
            options.append(option)
        menus[name] = Menu(name, raw["prompt"], tuple(options))
    start = settings.get("start", "main")
    if start not in menus:
        raise BotError(f"{where}: start menu {start!r} is not defined")
    for menu in menus.values():
        for option in menu.options:
            if option.goto is not None and option.goto not in menus:
                raise BotError(f"{where}: menu {menu.name!r} goes to unknown menu {option.goto!r}")
    return IvrConfig(
        start=start,
        menus=menus,
        timeout_seconds=float(settings.get("timeout_seconds", 8)),
        max_retries=int(settings.get("max_retries", 2)),
        goodbye=settings.get("goodbye", "Goodbye."),
        not_understood=settings.get("not_understood", "Sorry, I did not get that."),
    )


@functools.cache
def _default_config() -> IvrConfig:
    return load_menu(os.environ.get("GATEWAY_IVR_MENU") or DEFAULT_MENU)


@functools.cache
def _spotter(keywords: tuple[str, ...]) -> KeywordSpotter:
    # One recognizer per keyword set per process: building it loads the model.
    return KeywordSpotter(list(keywords))


class IvrBot(BaseBot):
    """Walks the caller through the menus."""

    def __init__(self, config: IvrConfig | None = None) -> None:
        self.config = config or _default_config()
        self.spotter = _spotter(tuple(self.config.keywords)) if self.config.keywords else None
        self.menu = self.config.menus[self.config.start]
        self.retries = 0
        self.path: list[str] = []  # what the caller chose, for logs and tests

    async def on_start(self, call: CallControl) -> None:
        """Greet with the start menu."""
        await self._prompt(call)

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        """A key chooses the option bound to it."""
        option = next((o for o in self.menu.options if o.dtmf == digit), None)
        await self._choose(call, option, f"key {digit}")

    async def on_utterance(self, call: CallControl, utterance: Utterance) -> None:
        """A spoken keyword chooses its option."""
        word = await self.spotter.spot(utterance.pcm) if self.spotter else None
        option = None
        if word is not None:
            option = next((o for o in self.menu.options if word in o.keywords), None)
        await self._choose(call, option, f"said {word!r}")

    async def on_timeout(self, call: CallControl) -> None:
        """Silence: re-prompt, then give up."""
        await self._retry(call, "no input")

    async def _prompt(self, call: CallControl) -> None:
        await call.say(self.menu.prompt)
        call.expect_input(self.config.timeout_seconds)

    async def _retry(self, call: CallControl, why: str) -> None:
        self.retries += 1
        log.info(
            "call %s: IVR %s in menu %s (try %d)",
            call.info.call_id,
            why,
            self.menu.name,
            self.retries,
        )
        if self.retries > self.config.max_retries:
            await call.say(self.config.goodbye, interruptible=False)
            await call.hangup(f"IVR: {why} after {self.config.max_retries} retries")
            return
        await call.say(self.config.not_understood)
        await self._prompt(call)

    async def _choose(self, call: CallControl, option: Option | None, how: str) -> None:
        if option is None:
            await self._retry(call, f"unrecognized input ({how})")
            return
        self.retries = 0
        self.path.append(f"{self.menu.name}:{how}")
        log.info("call %s: IVR %s in menu %s", call.info.call_id, how, self.menu.name)
        if option.goto is not None:
            self.menu = self.config.menus[option.goto]
            await self._prompt(call)
        elif option.say is not None:
            await call.say(option.say)
            call.expect_input(self.config.timeout_seconds)
        elif option.action == "repeat":
            await self._prompt(call)
        else:
            await call.say(self.config.goodbye, interruptible=False)
            await call.hangup(f"IVR: caller chose to end the call ({how})")
