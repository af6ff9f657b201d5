"""Start-up does the first call's one-off work (gateway/warmup.py), and a serving
process keeps its start-up objects out of the garbage collector's passes (gateway/heap.py)."""

from __future__ import annotations

import gc
import textwrap
import weakref
from pathlib import Path

from gateway.heap import freeze_startup_objects

from .test_lazy_loading import run_fresh

# In a fresh interpreter: this test process imported anyio's backend long ago. The
# gateway, with business events on, sends its first Graph request and its first event.
PROBE = textwrap.dedent(
    """
    import asyncio, sys
    from aiortc.rtcdtlstransport import SRTP_PROFILES
    from gateway import rtc
    from gateway.app import Gateway
    from gateway.config import Secret, load_settings

    async def main():
        gateway = Gateway(
            load_settings(port=0, events_url="http://127.0.0.1:9/events", events_secret=Secret("s"))
        )
        await gateway.start()
        try:
            before = set(sys.modules)
            profiles = tuple(p.openssl_profile for p in SRTP_PROFILES)
            print("dtls context made:", profiles in rtc.certificate()._contexts)
            # The Graph client's first request, through the same httpx client and transport.
            await gateway.graph._client.get(gateway.url + "/healthz")
            print("imported by the first request:", sorted(set(sys.modules) - before))
            # The backend's client: aiohttp too, so no anyio backend (gateway/warmup.py).
            response = await gateway.outbox._client.get(gateway.url + "/healthz")
            print("events' client:", response.status_code, sorted(set(sys.modules) - before))
            print("anyio backend:", "anyio._backends._asyncio" in sys.modules)
        finally:
            await gateway.aclose()

    asyncio.run(main())
    """
)


def test_start_up_leaves_nothing_to_import_for_the_first_graph_request(tmp_path: Path) -> None:
    assert run_fresh(PROBE, tmp_path) == [
        "dtls context made: True",
        "imported by the first request: []",
        "events' client: 200 []",
        "anyio backend: False",
    ]


def test_freezing_collects_start_up_garbage_first_and_freezes_the_rest() -> None:
    class Node:
        other: Node

    def cycle() -> Node:
        a, b = Node(), Node()
        a.other, b.other = b, a
        return a

    garbage = cycle()
    gone = weakref.ref(garbage)
    del garbage  # unreachable, but only the collector frees a cycle
    kept = cycle()
    assert gone() is not None
    try:
        freeze_startup_objects()
        assert gone() is None  # collected, not frozen for the process's life
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # out of every generation
    finally:
        gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())
