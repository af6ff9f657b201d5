"""The first call's one-off work, done before the gateway says it is ready.

Some of what answering a call needs is made on first use, once per process:
httpx's connection pool makes an anyio ``Event`` per request, and the first one
imports anyio's asyncio backend (about 50 ms of CPU on a quiet machine, over
100 ms under load); the process's DTLS certificate (an ECDSA key) and its
OpenSSL context are made by the first peer connection. Left there, the first
caller's answer waits for all of it, in the middle of other calls' media.
:func:`warm_up` does it at start-up instead; each step is idempotent.
"""

from __future__ import annotations

import logging
import time

import anyio
from aiortc.rtcdtlstransport import SRTP_PROFILES

from . import rtc

log = logging.getLogger(__name__)


def warm_up() -> None:
    """Do the first call's one-off work now (call it on the running event loop)."""
    started = time.process_time()
    # anyio imports the backend of the running loop when its first primitive is made.
    anyio.Event()
    # The context every call's DTLS transport is made from (rtc.SharedCertificate).
    rtc.certificate()._create_ssl_context(SRTP_PROFILES)
    log.debug("warm-up took %.1f ms of CPU", (time.process_time() - started) * 1000)
