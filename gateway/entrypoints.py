"""Finding plugins by name in an entry-point group (bots, voices, transcribers).

``importlib.metadata`` is imported when a group is first scanned: it brings
``zipfile``, ``csv`` and the email parser (0.9 MiB), which a gateway running
one of the project's own plugins (``bundled``) never needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from .errors import GatewayError


def plugin_names(group: str) -> list[str]:
    """Names registered in entry-point ``group``, sorted."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=group)})


def load_plugin(
    group: str,
    name: str,
    *,
    kind: str,
    error: type[GatewayError],
    bundled: Mapping[str, str] | None = None,
) -> Any:
    """The object registered as ``name`` in ``group``.

    ``bundled`` maps the project's own plugins to their ``module:attribute`` (as its
    ``pyproject.toml`` registers them): those load without scanning every installed
    distribution's metadata. Raises ``error`` naming the choices when ``name`` is
    unknown, or the import error when the plugin cannot be loaded (a plugin's bug is
    the plugin's, say so).
    """
    target = (bundled or {}).get(name)
    try:
        if target is not None:
            return _load(target)
    except Exception as exc:
        raise error(f"{kind} {name!r} failed to load: {exc!r}") from exc
    from importlib.metadata import entry_points

    matches = [ep for ep in entry_points(group=group) if ep.name == name]
    if not matches:
        choices = ", ".join(plugin_names(group)) or "none installed"
        raise error(f"unknown {kind} {name!r}; available: {choices}")
    try:
        return matches[0].load()
    except Exception as exc:
        raise error(f"{kind} {name!r} failed to load: {exc!r}") from exc


def _load(target: str) -> Any:
    """The object a bundled plugin's ``module:attribute`` names (as EntryPoint.load does)."""
    module, _, attributes = target.partition(":")
    found: Any = importlib.import_module(module)
    for attribute in attributes.split("."):
        found = getattr(found, attribute)
    return found
