"""A voice-bot media gateway for WhatsApp Business calling."""

import sys as _sys

__version__ = "0.1.0"

# httpx imports its command-line client (click and pygments, about 2 MiB resident)
# whenever click is installed (faster-whisper's huggingface_hub brings it), and
# without `rich` that import fails anyway, leaving httpx's stub `main`. The gateway
# never runs that CLI: a None entry gives httpx the stub without the detour.
if "httpx" not in _sys.modules:
    _sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
