"""The Graph API failing in each way (one action per way here; every action in
``make faults``): the call still ends, keeps its record, and no webhook gets a 5xx."""

from __future__ import annotations

import pytest

from . import graph_faults
from .conftest import start_stack, stop_stack

# Each failure on one action, rotating through the actions.
CASES = [
    (graph_faults.ACTIONS[i % len(graph_faults.ACTIONS)], label)
    for i, (label, *_rest) in enumerate(graph_faults.FAILURES)
]


@pytest.mark.parametrize(("action", "failure"), CASES)
async def test_graph_failure_still_ends_the_call(action: str, failure: str) -> None:
    stack = await start_stack()
    try:
        outcome = await graph_faults.run(stack, action, failure)
    finally:
        await stop_stack(stack)
    assert outcome.failed_attempts >= 1
    assert outcome.stuck == 0
    assert outcome.records_lost == 0
    assert outcome.responses_5xx == 0
