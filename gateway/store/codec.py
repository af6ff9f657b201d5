"""Webhook events in the journal: their dedupe keys, and reading them back."""

from __future__ import annotations

import json

from .. import events
from ..errors import StoreError
from ..events import Event, event_key


def dedupe_key(event: Event) -> str:
    """The text key two deliveries of the same event share (see :func:`events.event_key`)."""
    return json.dumps(event_key(event), separators=(",", ":"))


def decode_event(text: str) -> Event:
    """The event :func:`events.encode_event` wrote; StoreError if it cannot be read."""
    try:
        return events.decode_event(text)
    except ValueError as exc:
        raise StoreError(f"unreadable journal entry: {exc}") from None
