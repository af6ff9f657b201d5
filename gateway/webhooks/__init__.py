"""The webhook: Cloud API deliveries verified, parsed into events and handed off.

- signature.py: the ``X-Hub-Signature-256`` HMAC, made and checked;
- decode.py: the body as strict JSON;
- parse.py: the decoded delivery into events, with what was malformed;
- receiver.py: the aiohttp handlers (the subscription handshake, deliveries).

The modules that log do so as ``gateway.webhooks``, the name operators filter on.
"""

from .decode import decode_json
from .parse import MAX_CALL_ID_CHARS, parse_payload
from .receiver import DEFAULT_MAX_BODY_BYTES, EventSink, WebhookReceiver
from .signature import SIGNATURE_HEADER, sign, verify_signature

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_CALL_ID_CHARS",
    "SIGNATURE_HEADER",
    "EventSink",
    "WebhookReceiver",
    "decode_json",
    "parse_payload",
    "sign",
    "verify_signature",
]
