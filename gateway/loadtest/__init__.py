"""``gateway loadtest``: simulated WhatsApp calls with recorded speech, measured."""

from .run import (
    LoadTestConfig,
    load_recordings,
    run_load_test,
    save_report,
    summary_table,
    write_charts,
)

__all__ = [
    "LoadTestConfig",
    "load_recordings",
    "run_load_test",
    "save_report",
    "summary_table",
    "write_charts",
]
