"""A bound on how long a stopping gateway may take to be gone.

When ``gateway serve`` stops (the drain is over, or a second SIGTERM ends every
call now), it closes everything in order: calls with ``terminate``, the cluster
membership, the HTTP server, the store. Each step has its own bound, but a
process also has to get past the interpreter's exit, which waits for every
non-daemon thread (aiortc starts one per call to decode, executors join theirs),
and a task that ignores its cancellation would hold ``asyncio.run`` for ever.

:class:`ExitDeadline` is the guarantee above those: a daemon thread, armed when
the shutdown starts, that lets the process end normally and, if it still runs
``seconds`` later, writes what it was waiting for to stderr (every asyncio
task's stack, when the loop still answers, and every thread's stack) and ends it
with ``os._exit(EXIT_CODE)``. A non-zero code: a shutdown that needed this is a
bug to find, and the log says where.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger(__name__)

# The exit code of a process the deadline ended (sysexits' EX_SOFTWARE).
EXIT_CODE = 70
# How long the dump waits for the event loop to list its tasks (it may be blocked).
TASK_DUMP_WAIT = 1.0


class ExitDeadline:
    """Ends the process ``seconds`` after :meth:`arm` if it has not ended by itself."""

    def __init__(
        self,
        seconds: float,
        *,
        stream: TextIO | None = None,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.seconds = seconds
        self._stream = stream
        self._exit = exit
        self._disarmed = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self) -> None:
        """Start counting (from a running event loop, whose tasks a dump then lists)."""
        if self._thread is not None:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        # Daemon: it must not itself be a thread the interpreter's exit waits for.
        self._thread = threading.Thread(target=self._run, name="exit-deadline", daemon=True)
        self._thread.start()

    def disarm(self) -> None:
        """Stop counting (for a caller that goes on living after its shutdown)."""
        self._disarmed.set()

    def _run(self) -> None:
        if self._disarmed.wait(self.seconds):
            return
        stream = self._stream or sys.stderr
        log.critical(
            "shutdown did not finish within %g s; what it waits for follows; exiting with %d",
            self.seconds,
            EXIT_CODE,
        )
        try:
            self._dump_tasks(stream)
            # faulthandler names threads by id only: the names (aiortc's "audio-decoder", ...).
            threads = ", ".join(
                f"{t.name} (0x{t.ident or 0:016x}{', daemon' if t.daemon else ''})"
                for t in threading.enumerate()
            )
            print(f"exit deadline: threads: {threads}", file=stream)
            print("exit deadline: every thread's stack:", file=stream, flush=True)
            faulthandler.dump_traceback(file=stream, all_threads=True)
            stream.flush()
        finally:
            self._exit(EXIT_CODE)

    def _dump_tasks(self, stream: TextIO) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            print("exit deadline: the event loop has finished", file=stream, flush=True)
            return
        listed = threading.Event()

        def dump() -> None:
            try:
                tasks = asyncio.all_tasks(loop)
                print(f"exit deadline: {len(tasks)} asyncio task(s) left:", file=stream)
                for task in tasks:
                    print(f"- {task.get_name()}, awaiting (outermost first):", file=stream)
                    for line in await_chain(task):
                        print(f"    {line}", file=stream)
                stream.flush()
            finally:
                listed.set()

        try:
            loop.call_soon_threadsafe(dump)
        except RuntimeError:  # closed meanwhile
            print("exit deadline: the event loop has finished", file=stream, flush=True)
            return
        if not listed.wait(TASK_DUMP_WAIT):
            print(
                f"exit deadline: the event loop did not answer within {TASK_DUMP_WAIT:.0f} s"
                " (blocked: see the main thread's stack)",
                file=stream,
                flush=True,
            )


def stop_if_cancelled() -> None:
    """Raise CancelledError if this task was cancelled and something swallowed it.

    A loop that must end when its task is cancelled, and whose turn runs more than
    Redis and asyncio's own waits, calls this once a turn: a library that loses a
    cancellation and returns normally would otherwise send it back to waiting, for
    good. Python 3.11's ``asyncio.wait_for`` does so when the task is cancelled in
    the moment what it waits for finishes; redis-py sends every command through it,
    which the cluster's client mends at that one place (:mod:`gateway.cluster.client`).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def await_chain(task: asyncio.Task[object]) -> list[str]:
    """Where a task waits: each coroutine it awaits, down to the future at the end.

    ``Task.print_stack`` shows a suspended task's outermost frame only; what hangs is
    usually several awaits further in.
    """
    lines = []
    awaited: object = task.get_coro()
    for _ in range(100):  # a chain, not a cycle; bounded anyway
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            lines.append(repr(awaited)[:300])  # a future, a task, or something else awaitable
            break
        code = frame.f_code
        lines.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        following = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        if following is None:
            break
        awaited = following
    return lines
