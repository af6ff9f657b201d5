"""Finding plugins by name in an entry-point group (bots, voices, transcribers)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from .errors import GatewayError


def plugin_names(group: str) -> list[str]:
    """Names registered in entry-point ``group``, sorted."""
    return sorted({ep.name for ep in entry_points(group=group)})


def load_plugin(group: str, name: str, *, kind: str, error: type[GatewayError]) -> Any:
    """The object registered as ``name`` in ``group``.

    Raises ``error`` naming the choices when ``name`` is unknown, or the import
    error when the plugin cannot be loaded (a plugin's bug is the plugin's, say so).
    """
    matches = [ep for ep in entry_points(group=group) if ep.name == name]
    if not matches:
        choices = ", ".join(plugin_names(group)) or "none installed"
        raise error(f"unknown {kind} {name!r}; available: {choices}")
    try:
        return matches[0].load()
    except Exception as exc:
        raise error(f"{kind} {name!r} failed to load: {exc!r}") from exc
