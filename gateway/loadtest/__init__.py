"""``gateway loadtest``: many simulated WhatsApp calls with recorded speech, measured.

- :mod:`.recordings`: caller WAVs, loaded and Opus-encoded once for every call
- :mod:`.callers`: one simulated caller, what it counts (sound, loss, lateness, latency)
- :mod:`.target`: the gateway under load (a local subprocess or a URL) and its /metrics
- :mod:`.run`: one run: sandbox, gateway, callers ramped in, sampled every second
- :mod:`.report`: the JSON report and the summary table; :mod:`.charts`: PNG charts
"""

from .charts import write_charts
from .recordings import Recording, load_recordings
from .report import save_report, summary_table
from .run import LoadTestConfig, run_load_test
from .target import GatewayUnderTest, start_local_gateway

__all__ = [
    "GatewayUnderTest",
    "LoadTestConfig",
    "Recording",
    "load_recordings",
    "run_load_test",
    "save_report",
    "start_local_gateway",
    "summary_table",
    "write_charts",
]
