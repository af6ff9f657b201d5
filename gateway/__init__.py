"""A voice-bot media gateway for WhatsApp Business calling."""

__version__ = "0.1.0"
