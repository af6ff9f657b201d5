"""An httpx transport that sends requests with aiohttp's HTTP client.

The Graph client keeps httpx's API (requests, responses, errors, mock transports
in tests); only the wire under it changes. httpx's own transport (httpcore, h11
and anyio, all pure Python) spends about 1.7 ms of CPU on one small POST over a
kept-alive connection, its client another 1.2; aiohttp (C parser, no anyio) about
0.5 for the same request (``benchmarks/call_setup.py``; a call makes two or three
Graph requests). What is sent is what httpx built: method, URL, headers (in its
order: ``Host``, ``User-Agent``, ``Authorization``...) and body. Responses are
handed back undecoded (``auto_decompress`` off), and httpx decodes them by their
``Content-Encoding`` as before.

aiohttp's failures become the httpx errors the Graph client tells apart: one that
never connected (``ConnectError``, ``ConnectTimeout``: safe to retry even a
``connect``) from one that may have reached Meta (``ReadError``, ``ReadTimeout``,
``RemoteProtocolError``).

One parsed copy of the CA certificates per process: aiohttp makes two default
contexts at import, each loading the system's CA bundle (about 0.7 MiB of parsed
certificates each; the unverified one for nothing), and the Graph transport's
own context (httpx's) would be a third, and one more for each transport. Every
transport made without a context of its own shares one (:func:`default_ssl_context`),
and :func:`share_ca_store` gives aiohttp that context as its verified default and
an unverified one without a store; the two it made are freed before any call.
"""

from __future__ import annotations

import ssl
from functools import cache

import aiohttp
import httpx

__all__ = ["AiohttpTransport", "default_ssl_context", "share_ca_store"]


@cache
def default_ssl_context() -> ssl.SSLContext:
    """The process's one context for transports made without their own: httpx's
    default (certifi's CA bundle), made once and shared with aiohttp (:func:`share_ca_store`)."""
    context = httpx.create_ssl_context()
    share_ca_store(context)
    return context


def share_ca_store(verified: ssl.SSLContext) -> None:
    """Make ``verified`` aiohttp's default for sessions that verify (``ssl=True``, the
    default), and its default for ``ssl=False`` a context with no CA store.

    What aiohttp made at import (see the module's doc) is freed. Without aiohttp's
    module-level defaults (another aiohttp version) nothing changes.
    """
    connector = aiohttp.connector
    if not isinstance(getattr(connector, "_SSL_CONTEXT_UNVERIFIED", None), ssl.SSLContext):
        return
    if not isinstance(getattr(connector, "_SSL_CONTEXT_VERIFIED", None), ssl.SSLContext):
        return
    # As aiohttp's own (connector._make_ssl_context(False)), less the CA store that
    # a context checking nothing never reads.
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.options |= ssl.OP_NO_SSLv2 | ssl.OP_NO_SSLv3 | ssl.OP_NO_COMPRESSION
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    unverified.set_alpn_protocols(("http/1.1",))
    connector._SSL_CONTEXT_VERIFIED = verified
    connector._SSL_CONTEXT_UNVERIFIED = unverified


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests over one aiohttp connection pool (made on first use).

    TLS is verified as httpx's default transport does (``httpx.create_ssl_context``);
    no proxy from the environment is used here (httpx's client mounts its own
    proxy transports, as before). Timeouts come from each request's httpx timeout.
    """

    def __init__(self, *, limit: int = 100, ssl_context: ssl.SSLContext | None = None) -> None:
        self._limit = limit
        # Made here (once per process), as httpx's transport does (it reads certifi's
        # CA bundle): not in the first call's answer.
        self._ssl = ssl_context if ssl_context is not None else default_ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made inside the running loop: aiohttp binds its session to it.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl),
            auto_decompress=False,
            # httpx's headers go as they are: no header of aiohttp's own.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the response with its body read (Graph answers are small)."""
        session = self._session if self._session is not None else self._open()
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("pool"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        body = await request.aread()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        try:
            async with session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                content = await response.read()
                version = response.version
                return httpx.Response(
                    response.status,
                    headers=response.raw_headers,
                    stream=httpx.ByteStream(content),
                    request=request,
                    extensions={
                        "http_version": b"HTTP/%d.%d" % (version or (1, 1)),
                        "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
                    },
                )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientPayloadError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout("timed out", request=request) from exc

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
