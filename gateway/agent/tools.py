"""Tools the model may call, written as typed Python functions.

The JSON schema comes from the signature and the docstring::

    @tool
    async def book_table(self, people: int, time: str, outside: bool = False) -> str:
        \"\"\"Book a table at the restaurant.

        Args:
            people: how many guests
            time: when, e.g. "19:30"
        \"\"\"

Parameters may be ``str``, ``int``, ``float``, ``bool``, a ``Literal`` of strings
or numbers, a ``list`` of those, or ``X | None``. The model's arguments are
checked and converted against the same hints before the function runs; a bad
call becomes an error message the model reads, not an exception on the call.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from ..errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

_TOOL_MARK = "__gateway_tool__"
_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def tool(func: F) -> F:
    """Mark a method of an agent bot subclass (or any function) as a tool."""
    setattr(func, _TOOL_MARK, True)
    return func


def is_tool(obj: object) -> bool:
    """Whether ``obj`` was marked with :func:`tool`."""
    return bool(getattr(obj, _TOOL_MARK, False))


class ToolArgumentError(ValueError):
    """The model's arguments do not fit the function's signature."""


@dataclass(frozen=True)
class Tool:
    """A callable the model can ask for, with its OpenAI ``tools`` entry."""

    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[..., Any]
    hints: dict[str, Any]

    @classmethod
    def from_function(cls, func: Callable[..., Any], name: str | None = None) -> Tool:
        """Build the schema from ``func``'s signature and docstring (bound methods too)."""
        name = name or func.__name__
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ConfigError(f"tool name {name!r} must be 1-64 letters, digits, _ or -")
        try:
            hints = typing.get_type_hints(func)
        except Exception as exc:
            raise ConfigError(f"tool {name}: cannot read its type hints: {exc}") from exc
        summary, arg_docs = _parse_docstring(inspect.getdoc(func) or "")
        properties: dict[str, Any] = {}
        required: list[str] = []
        hints.pop("return", None)
        for param in inspect.signature(func).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigError(f"tool {name}: *args/**kwargs cannot be described to a model")
            if param.name not in hints:
                raise ConfigError(f"tool {name}: parameter {param.name!r} needs a type hint")
            schema = _schema(hints[param.name], f"tool {name}, parameter {param.name}")
            if param.name in arg_docs:
                schema["description"] = arg_docs[param.name]
            properties[param.name] = schema
            if param.default is inspect.Parameter.empty:
                required.append(param.name)
        parameters = {"type": "object", "properties": properties, "required": required}
        return cls(name, summary or name.replace("_", " "), parameters, func, hints)

    @property
    def schema(self) -> dict[str, Any]:
        """The entry for the Chat Completions ``tools`` list."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def convert(self, arguments: str) -> dict[str, Any]:
        """Parse and type-check the model's JSON arguments."""
        try:
            raw = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ToolArgumentError(f"arguments are not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ToolArgumentError("arguments must be a JSON object")
        unknown = sorted(set(raw) - set(self.parameters["properties"]))
        if unknown:
            raise ToolArgumentError(f"unknown argument(s): {', '.join(unknown)}")
        missing = [p for p in self.parameters["required"] if p not in raw]
        if missing:
            raise ToolArgumentError(f"missing argument(s): {', '.join(missing)}")
        return {k: _coerce(v, self.hints[k], k) for k, v in raw.items()}

    async def __call__(self, arguments: str) -> str:
        """Run the tool on the model's arguments; the result as text for the model."""
        result = self.func(**self.convert(arguments))
        if isinstance(result, Awaitable):
            result = await result
        if result is None:
            return "done"
        return result if isinstance(result, str) else json.dumps(result, default=str)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary paragraph and the ``Args:`` descriptions of a Google-style docstring."""
    paragraphs = doc.split("\n\n")
    summary = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0] else ""
    args: dict[str, str] = {}
    match = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?)+)", doc, re.M)
    if match:
        current = None
        for line in match.group(1).splitlines():
            item = re.match(r"\s+(\w+)(?:\s*\([^)]*\))?:\s*(.*)", line)
            if item and (current is None or len(line) - len(line.lstrip()) <= 8):
                current = item.group(1)
                args[current] = item.group(2).strip()
            elif current is not None and line.strip():
                args[current] += " " + line.strip()
    if summary.startswith(("Args:", "Arguments:", "Parameters:")):
        summary = ""
    return summary, args


def _schema(hint: Any, where: str) -> dict[str, Any]:
    origin = get_origin(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin is Literal:
        values = list(get_args(hint))
        kinds = {_JSON_TYPES.get(type(v)) for v in values}
        if None in kinds or len(kinds) != 1:
            raise ConfigError(f"{where}: Literal values must all be str, int or float")
        return {"type": kinds.pop(), "enum": values}
    if origin is list:
        (item,) = get_args(hint) or (str,)
        return {"type": "array", "items": _schema(item, where)}
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return _schema(options[0], where)
    raise ConfigError(f"{where}: type {hint!r} cannot be described to a model")


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        (hint,) = [a for a in get_args(hint) if a is not type(None)]
        origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise ToolArgumentError(f"{name} must be one of {list(get_args(hint))}, not {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ToolArgumentError(f"{name} must be a list")
        (item,) = get_args(hint) or (str,)
        return [_coerce(v, item, name) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ToolArgumentError(f"{name} must be true or false, not {value!r}")
        return value
    if hint is int:
        # Models write 3.0 for 3 now and then; a whole float is fine, 2.5 is not.
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ToolArgumentError(f"{name} must be a whole number, not {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolArgumentError(f"{name} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ToolArgumentError(f"{name} must be a string, not {value!r}")
        return value
    raise ToolArgumentError(f"{name}: unsupported type {hint!r}")
