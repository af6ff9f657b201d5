"""A voice-bot media gateway for WhatsApp Business calling."""

from . import lazy_imports as _lazy_imports

__version__ = "0.1.0"

# Before any library: what they import but a gateway rarely runs waits for first use.
_lazy_imports.install()
