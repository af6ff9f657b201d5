"""Hypothesis over the real webhook receiver: 0 responses >= 500, 0 stuck calls.

``make test`` runs a few hundred cases; ``make faults`` runs FUZZ_CASES (2000).
"""

from __future__ import annotations

import os

import pytest

from . import fault_figures as ff
from .webhook_fuzz import fuzz

# hypothesis flags any change of the global `random` state while it draws. The gateway's
# event loop runs in another thread here, and aiortc and aioice draw from that global
# generator (ICE credentials, SSRCs, RTCP intervals) whenever they like; the strategies
# themselves use no `random` (webhook_fuzz.py). The warning names the wrong culprit.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)


def _check(cases: int) -> dict[str, object]:
    figures = fuzz(cases)
    statuses = figures["statuses"]
    assert isinstance(statuses, dict)
    assert all(code < 500 for code in statuses), statuses
    assert figures["internal_errors"] == 0
    assert figures["stuck"] == 0
    # The fuzz reached past the parser: some deliveries were taken, some refused.
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0, statuses
    return figures


def test_fuzzed_signed_deliveries_get_no_5xx_and_leave_no_call_stuck() -> None:
    _check(300)


@pytest.mark.slow
def test_fuzzed_signed_deliveries_at_length() -> None:
    figures = _check(int(os.environ.get("FUZZ_CASES", "2000")))
    ff.record(
        "webhook fuzzing (hypothesis, signed)",
        f"{figures['cases']} cases, HTTP statuses {figures['statuses']}, responses >= 500 0, "
        f"calls started {figures['calls_started']}, stuck {figures['stuck']}",
    )
