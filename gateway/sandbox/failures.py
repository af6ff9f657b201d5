"""The failures the fake Graph API can be told to make (:meth:`CloudAPISandbox.fail_next`),
queued per action, and how each one answers on the wire."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

from . import payloads

__all__ = ["Failure", "FailurePlan", "InjectedFailure"]

log = logging.getLogger(__name__)


class Failure(StrEnum):
    """How the fake Graph API fails a request (:meth:`CloudAPISandbox.fail_next`)."""

    GRAPH_ERROR = "graph_error"
    """Meta's error body: ``{"error": {"message", "type", "code", ...}}``."""
    TITLE_ONLY = "title_only"
    """An error body with only ``code`` and ``title``, as some real ones have."""
    MALFORMED_JSON = "malformed_json"
    """A body that is not JSON (a proxy's HTML error page)."""
    TIMEOUT = "timeout"
    """No answer for ``delay`` seconds, then an error: the client should have given up."""
    DISCONNECT = "disconnect"
    """The connection closed without an answer."""


@dataclass
class InjectedFailure:
    """One failure queued by :meth:`CloudAPISandbox.fail_next` and how often it is left."""

    status: int
    code: int
    message: str
    details: str | None
    times: int
    how: Failure = Failure.GRAPH_ERROR
    retry_after: float | None = None
    delay: float = 0.0

    async def answer(
        self,
        request: web.Request,
        action: str,
        *,
        record: Callable[[int], None],
        error: Callable[[], web.Response],
    ) -> web.Response:
        """The fake Graph API's answer to a request this failure hits.

        ``record(status)`` records the request as answered with ``status`` (0: no
        answer); ``error()`` records it and answers with Meta's error body.
        """
        how = self.how
        if how is Failure.TIMEOUT:
            record(0)  # recorded now: the client gives up
            await asyncio.sleep(self.delay)
            return web.json_response(
                payloads.graph_error(self.code, "answered too late"), status=504
            )
        if how is Failure.DISCONNECT:
            record(0)
            log.info("graph sandbox: %s -> connection closed without an answer", action)
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # never sent: the connection is gone
        if how is Failure.MALFORMED_JSON:
            record(self.status)
            response = web.Response(
                status=self.status,
                text=f"<html><body>{self.status} Bad Gateway</body></html>",
                content_type="text/html",
            )
        elif how is Failure.TITLE_ONLY:
            record(self.status)
            response = web.json_response(
                {"error": {"code": self.code, "title": self.message}}, status=self.status
            )
        else:
            response = error()
        if self.retry_after is not None:
            response.headers["Retry-After"] = f"{self.retry_after:g}"
        return response


class FailurePlan:
    """The failures queued for the fake Graph API, per action, each for its ``times``."""

    def __init__(self) -> None:
        self._queues: dict[str, list[InjectedFailure]] = {}

    def add(self, action: str, failure: InjectedFailure) -> None:
        """Queue ``failure`` for the next requests for ``action``, after those queued before."""
        self._queues.setdefault(action, []).append(failure)

    def take(self, action: str) -> InjectedFailure | None:
        """The failure the next request for ``action`` meets (one of its times used), if any."""
        queue = self._queues.get(action)
        if not queue:
            return None
        failure = queue[0]
        failure.times -= 1
        if failure.times <= 0:
            queue.pop(0)
        return failure
