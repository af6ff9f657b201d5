"""The Graph client's wire: httpx requests sent by aiohttp, byte for byte as httpx sends them."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from gateway.aiohttp_transport import AiohttpTransport
from gateway.metrics import Metrics

Reply = Callable[[bytes], bytes | None]


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


class RawServer:
    """A loopback HTTP/1.1 server that keeps each request's bytes and answers with ``reply``."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:  # hang up without answering
                    break
                if answer:
                    writer.write(answer)
                    await writer.drain()
                else:  # never answer
                    await asyncio.sleep(3600)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


BODY = {"messaging_product": "whatsapp", "action": "accept", "call_id": "wacid.x", "sdp": "v=0\r\n"}


async def _post(transport: httpx.AsyncBaseTransport, port: int, **kw: object) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}/v23.0/",
        headers={"Authorization": "Bearer token"},
        transport=transport,
        **kw,  # type: ignore[arg-type]
    ) as client:
        return await client.post("106540352242922/calls", json=BODY)


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    async with RawServer(lambda _: _ok(b'{"success": true}')) as s:
        yield s


async def test_the_request_on_the_wire_is_what_httpx_sends(server: RawServer) -> None:
    ours = await _post(AiohttpTransport(), server.port)
    theirs = await _post(httpx.AsyncHTTPTransport(), server.port)
    assert ours.status_code == theirs.status_code == 200
    assert ours.json() == theirs.json() == {"success": True}
    sent_by_aiohttp, sent_by_httpx = server.requests
    # Same request line, same headers in the same order, same body: Meta sees no difference.
    assert sent_by_aiohttp == sent_by_httpx
    assert sent_by_aiohttp.startswith(b"POST /v23.0/106540352242922/calls HTTP/1.1\r\n")
    assert json.loads(sent_by_aiohttp.split(b"\r\n\r\n", 1)[1]) == BODY


async def test_a_connection_is_kept_for_the_next_request(server: RawServer) -> None:
    url = f"http://127.0.0.1:{server.port}/"
    async with httpx.AsyncClient(base_url=url, transport=AiohttpTransport()) as c:
        for _ in range(3):
            assert (await c.post("1/calls", json=BODY)).status_code == 200
    assert len(server.requests) == 3 and server.connections == 1


async def test_a_compressed_answer_is_decoded_once() -> None:
    body = gzip.compress(b'{"success": true}')
    async with RawServer(lambda _: _ok(body, b"Content-Encoding: gzip\r\n")) as s:
        response = await _post(AiohttpTransport(), s.port)
    assert response.json() == {"success": True}
    assert response.headers["content-encoding"] == "gzip"


async def test_status_and_headers_come_back() -> None:
    answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}"
    async with RawServer(lambda _: answer) as s:
        response = await _post(AiohttpTransport(), s.port)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.reason_phrase == "Too Many Requests"


async def test_refused_connection_is_a_connect_error() -> None:
    # A request that never connected never reached Meta: the Graph client may retry it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await _post(AiohttpTransport(), port)


async def test_hang_up_without_an_answer_is_not_a_connect_error() -> None:
    async with RawServer(lambda _: None) as s:
        with pytest.raises(httpx.TransportError) as err:
            await _post(AiohttpTransport(), s.port)
    assert not isinstance(err.value, httpx.ConnectError | httpx.ConnectTimeout)
    assert len(s.requests) == 1  # it did reach the server


async def test_no_answer_in_time_is_a_read_timeout() -> None:
    async with RawServer(lambda _: b"") as s:
        with pytest.raises(httpx.ReadTimeout):
            await _post(AiohttpTransport(), s.port, timeout=httpx.Timeout(5.0, read=0.2))


async def test_the_gateway_sends_graph_requests_with_aiohttp() -> None:
    transport = Metrics().graph.transport()
    assert isinstance(transport._inner, AiohttpTransport)  # type: ignore[attr-defined]


def test_one_parsed_ca_store_per_process() -> None:
    import aiohttp.connector as connector

    transport = AiohttpTransport()
    # aiohttp's default for verifying sessions is the transport's own context...
    assert connector._SSL_CONTEXT_VERIFIED is transport._ssl
    assert transport._ssl.verify_mode == ssl.CERT_REQUIRED and transport._ssl.check_hostname
    assert transport._ssl.cert_store_stats()["x509_ca"] > 0
    # ...and its default for ssl=False checks nothing and holds no CA certificates.
    unverified = connector._SSL_CONTEXT_UNVERIFIED
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname
    assert unverified.cert_store_stats()["x509"] == 0
    # A second transport (the business events' beside the Graph API's) shares it.
    assert AiohttpTransport()._ssl is transport._ssl
    # A transport given its own context leaves the defaults alone.
    own = ssl.create_default_context()
    assert AiohttpTransport(ssl_context=own)._ssl is own
    assert connector._SSL_CONTEXT_VERIFIED is transport._ssl
