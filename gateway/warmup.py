"""The first call's one-off work, done before the gateway says it is ready.

Some of what answering a call needs is made on first use, once per process: the
process's DTLS certificate (an ECDSA key) and its OpenSSL context are made by the
first peer connection. Left there, the first caller's answer waits for it, in the
middle of other calls' media. :func:`warm_up` does it at start-up instead; it is
idempotent.

anyio's asyncio backend is not warmed: httpx's own transport (httpcore) would
import it with its first request (about 50 ms of CPU, 1.3 MiB), but the gateway's
HTTP clients (the Graph API's, the business backend's events) send through
aiohttp (:mod:`gateway.aiohttp_transport`), so a gateway never imports it unless
a bot's own client (the OpenAI SDK's) does.
"""

from __future__ import annotations

import logging
import time

from aiortc.rtcdtlstransport import SRTP_PROFILES

from . import rtc

log = logging.getLogger(__name__)


def warm_up() -> None:
    """Do the first call's one-off work now (call it on the running event loop)."""
    started = time.process_time()
    # The context every call's DTLS transport is made from (rtc.SharedCertificate).
    rtc.certificate()._create_ssl_context(SRTP_PROFILES)
    log.debug("warm-up took %.1f ms of CPU", (time.process_time() - started) * 1000)
