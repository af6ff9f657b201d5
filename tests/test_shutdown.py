"""The exit deadline: a stopping gateway is gone in bounded time, and says what held it."""

from __future__ import annotations

import asyncio
import sys

from gateway.calls.inbox import Inbox
from gateway.events import CallStatus
from gateway.shutdown import EXIT_CODE

from .conftest import start_stack

# Each case is a process of its own: what is tested is how (and whether) it exits.
ARM = "from gateway.shutdown import ExitDeadline\n"

# A non-daemon thread nobody stops (as aiortc's per-call decoder thread, waiting on
# its queue, when a receiver is never stopped): the interpreter's exit waits for it.
BLOCKED_THREAD = (
    ARM
    + """
import asyncio, queue, threading

async def main():
    threading.Thread(target=queue.Queue().get, name="audio-decoder").start()
    ExitDeadline(0.5).arm()

asyncio.run(main())
"""
)

# A task that swallows its cancellation: asyncio.run waits for it at its end.
STUBBORN_TASK = (
    ARM
    + """
import asyncio

async def stubborn():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

async def main():
    asyncio.create_task(stubborn(), name="stubborn-task")
    await asyncio.sleep(0)
    ExitDeadline(0.5).arm()

asyncio.run(main())
"""
)

# A shutdown that finishes: the deadline neither delays nor changes the exit.
CLEAN = (
    ARM
    + """
import asyncio

async def main():
    ExitDeadline(3600).arm()

asyncio.run(main())
print("done", flush=True)
"""
)


async def _run(code: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Liveness only (the cases end within a second): without the deadline they hang.
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("the process did not exit") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_thread_that_holds_the_exit_is_dumped_and_the_process_ends() -> None:
    code, _, err = await _run(BLOCKED_THREAD)
    assert code == EXIT_CODE, err
    assert "shutdown did not finish within 0.5 s" in err, err
    assert "every thread's stack" in err
    assert "audio-decoder (0x" in err, err  # the thread, by name and id
    assert "queue.py" in err and "in get" in err, err  # and where it waits


async def test_a_task_that_ignores_cancellation_is_dumped_and_the_process_ends() -> None:
    code, _, err = await _run(STUBBORN_TASK)
    assert code == EXIT_CODE, err
    assert "asyncio task(s) left" in err and "stubborn-task" in err, err
    assert "in stubborn" in err and "in sleep" in err, err  # what it awaits, to the end


async def test_a_shutdown_that_finishes_exits_as_usual() -> None:
    code, out, err = await _run(CLEAN)
    assert (code, out) == (0, "done\n"), err


async def test_closing_does_not_wait_for_a_webhook_whose_body_never_comes() -> None:
    # Once aiohttp's server shuts down it drops what a connection still sends, so a
    # delivery whose headers came before and whose body comes after waits for its
    # body for good. Closing must not wait aiohttp's default minute for it: a worker
    # so outlived the second SIGTERM (its own terminates' webhooks were arriving).
    stack = await start_stack()
    _, writer = await asyncio.open_connection(stack.gateway.settings.host, stack.gateway.port)
    try:
        writer.write(
            b"POST /webhook HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        runner = stack.gateway._runner
        assert runner is not None and runner.server is not None
        async with asyncio.timeout(30):  # the handler is reading the body
            while not any(c._request_in_progress for c in runner.server.connections):
                await asyncio.sleep(0.01)
        # Liveness only: without a bound of its own, aiohttp waits 60 s.
        await asyncio.wait_for(stack.aclose(), 40)
    finally:
        writer.close()


async def test_the_call_managers_inbox_stops_even_if_a_library_swallows_its_cancel() -> None:
    # redis-py's asyncio pipeline now and then returns normally from a cancelled
    # execute() (measured: 29 of 200 cancels); the inbox worker, cancelled there while
    # saving a record, went back to waiting for events, and shutdown waited for it.
    inside = asyncio.Event()

    async def handle(event: object) -> None:
        inside.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # what the library does

    async def mark_handled(entry: object) -> None:
        pass

    inbox = Inbox(handle, mark_handled)
    inbox.start()
    inbox.put(CallStatus("wacid.S", "1", "RINGING", 1700000000))
    await inside.wait()
    inbox.cancel()
    await asyncio.wait_for(inbox.stopped(), 30)  # liveness: without the check, for good
    assert not inbox.started
