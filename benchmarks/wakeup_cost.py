"""What one sleep and wake-up of a thread costs its process here, in CPU.

On a VM each wake-up's exits are charged to the task that slept, so a process
pays for every separate wake-up of its event loop whatever then runs. Three
loops, each waking every ``--period`` (20 ms, the frame clock's) for
``--seconds``, print the process CPU time per wake-up: ``time.sleep``, a bare
``epoll.poll`` timeout, and an otherwise idle asyncio loop with one timer
callback (the event loop's own pass on top). A busy machine makes them cheaper
(the core does not go idle between), so say how loaded it was.

    python benchmarks/wakeup_cost.py [--period 0.02] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import select
import time
from collections.abc import Callable


def per_wakeup(wait: Callable[[], None], count: int) -> float:
    """Process CPU per call of ``wait``, in us."""
    start = time.process_time()
    for _ in range(count):
        wait()
    return (time.process_time() - start) * 1e6 / count


async def asyncio_timer(period: float, seconds: float) -> float:
    """Process CPU per wake-up of an idle loop whose one timer re-arms every ``period``."""
    loop = asyncio.get_running_loop()
    runs = [0]

    def tick() -> None:
        runs[0] += 1
        loop.call_at(loop.time() + period, tick)

    tick()
    await asyncio.sleep(0.5)
    start, first = time.process_time(), runs[0]
    await asyncio.sleep(seconds)
    return (time.process_time() - start) * 1e6 / (runs[0] - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--period", type=float, default=0.02)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    count = int(args.seconds / args.period)
    epoll = select.epoll()
    print(f"process CPU per wake-up, every {args.period * 1000:.0f} ms for {args.seconds:.0f} s")
    print(f"  time.sleep            {per_wakeup(lambda: time.sleep(args.period), count):7.1f} us")
    print(f"  epoll.poll (timeout)  {per_wakeup(lambda: epoll.poll(args.period), count):7.1f} us")
    print(
        f"  asyncio, one timer    {asyncio.run(asyncio_timer(args.period, args.seconds)):7.1f} us"
    )


if __name__ == "__main__":
    main()
