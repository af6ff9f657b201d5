"""An event loop on a virtual clock, for tests of pacing (frames every 20 ms, catching up
after a stall) that must not depend on how busy the machine is.

The loop's clock moves only when it has nothing ready to run: straight to its next timer,
as if it had slept exactly until then, never late. A test makes a stall on purpose with
:meth:`VirtualClockLoop.stall` (the loop was blocked that long: its clock jumps on while
nothing runs). Everything else is a real selector loop: sockets and threads work, and
when no timer is set it waits for them for real.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any


class _Selector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without waiting while a timer is set; the clock jumps to it instead."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is None or timeout <= 0:
            return super().select(timeout)  # type: ignore[no-any-return]
        events = super().select(0)
        if not events:
            self._clock[0] += timeout
        return events  # type: ignore[no-any-return]


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose :meth:`time` is virtual (see the module's docstring)."""

    def __init__(self) -> None:
        self._clock = [1000.0]
        super().__init__(_Selector(self._clock))

    def time(self) -> float:
        return self._clock[0]

    def stall(self, seconds: float) -> None:
        """The loop is blocked for ``seconds`` by the code running now."""
        self._clock[0] += seconds


def stall(seconds: float) -> None:
    """Block the running :class:`VirtualClockLoop` for ``seconds`` (of its clock)."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualClockLoop), "run the test with @on_virtual_clock"
    loop.stall(seconds)


def on_virtual_clock(
    test: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., None]:
    """Run an async test on a fresh :class:`VirtualClockLoop` (fixtures are passed on)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
            runner.run(test(*args, **kwargs))

    return run
