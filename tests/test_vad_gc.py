"""The VAD's compiled step and the garbage collector: a cycle never crashes the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.pipeline.vad import compiled

# A compiled step whose ring (a memoryview it holds an export of) is in a garbage
# cycle with it. Before the fix the collector cleared the memoryview first (its
# tp_clear drops the managed buffer despite the export) and the step's release then
# read freed memory: a segmentation fault, every run.
_CYCLES = """
import gc, webrtcvad
from gateway.pipeline.vad.compiled import make_step
for _ in range(20):
    ring = memoryview(bytearray(10 * 320 * 2)).cast("h", (10, 320))
    step = make_step(ring, webrtcvad.Vad(2), 2)
    cycle = [step, ring]
    cycle.append(cycle)
del ring, step, cycle
gc.collect()
print("collected")
"""


@pytest.mark.skipif(not compiled.available(), reason="the compiled VAD step is not built")
def test_a_step_in_a_garbage_cycle_with_its_ring_is_collected_without_a_crash() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CYCLES], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "collected"
    assert "BufferError" not in done.stderr
