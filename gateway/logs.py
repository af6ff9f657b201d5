"""Log setup: the default text lines, or one JSON object per line for log pipelines.

``GATEWAY_LOG_FORMAT=json`` gives lines such as::

    {"time": "2026-11-25T14:02:11.532Z", "level": "INFO", "logger": "gateway.calls",
     "message": "call wacid.X: NEW -> PRE_ACCEPTED (answer sent)", "call_id": "wacid.X"}

``call_id`` comes from the context of the call's own tasks (:func:`call_context`)
or, for lines logged elsewhere about a call, from the ``"call %s: ..."`` form the
gateway's messages use. Fields passed with ``extra=`` are kept as fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import IO, Any, Final

from .errors import ConfigError

FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
MAX_FIELD: Final = 4096
"""Longest string value written; untrusted text (a caller's name, a bot's reason) is cut."""

call_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_id", default=None)

# Attributes every LogRecord has; anything else was passed with extra= and becomes a field.
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "call_id",
    "taskName",
}


def call_context(call_id: str) -> contextvars.Context:
    """A copy of the current context in which log lines carry ``call_id``."""
    context = contextvars.copy_context()
    context.run(call_id_var.set, call_id)
    return context


class CallIdFilter(logging.Filter):
    """Sets ``record.call_id`` (None when the line is about no call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "call_id", None) is None:
            call_id = call_id_var.get()
            if call_id is None and isinstance(record.msg, str) and record.msg.startswith("call %s"):
                args = record.args
                if isinstance(args, tuple) and args and isinstance(args[0], str):
                    call_id = args[0]
            record.call_id = call_id
        return True


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD:
        return value[:MAX_FIELD] + "...(truncated)"
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, logger, message, call_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _clip(record.getMessage()),
        }
        call_id = getattr(record, "call_id", None)
        if call_id is not None:
            entry["call_id"] = _clip(str(call_id))[:128]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _clip(value if isinstance(value, int | float | bool) else str(value))
        if record.exc_info:
            entry["exception"] = _clip(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = _clip(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def make_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``fmt`` (``text`` or ``json``) to ``stream`` (default stderr).

    Raises ConfigError for an unknown format.
    """
    fmt = fmt.lower() or "text"
    if fmt not in FORMATS:
        raise ConfigError(f"GATEWAY_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream)
    handler.addFilter(CallIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr in ``fmt`` at ``level`` (the command line's set-up)."""
    handler = make_handler(fmt)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
