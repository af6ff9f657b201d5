"""Taking over an object aiortc made: the gateway's subclass, on the same instance.

aiortc creates its transceivers' senders, receivers and DTLS transports itself
and takes no factory, so the gateway changes the class of the instance it made
(before the connection uses it) instead of making its own.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def adopt(instance: object, cls: type[T], base: type) -> T:
    """``instance`` (aiortc's ``base``, or already a ``cls``) as a ``cls``, the same object.

    Raises TypeError for anything else (another subclass: its code would be lost).
    """
    if not isinstance(instance, cls):
        if type(instance) is not base:
            raise TypeError(f"cannot adopt a {type(instance).__name__}")
        instance.__class__ = cls
    assert isinstance(instance, cls)
    return instance
