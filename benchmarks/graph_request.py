"""What one Graph API request costs the gateway's process: httpx's own transport, the
aiohttp transport under httpx (what the gateway uses), and aiohttp alone.

An aiohttp server in another process answers ``POST /<id>/calls`` with
``{"success": true}`` over loopback, kept alive; this process sends an ``accept``
with an SDP answer's size, one request after the other, and prints its own CPU
(``time.process_time``) per request, after a warm-up.

    python benchmarks/graph_request.py [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx

from gateway.aiohttp_transport import AiohttpTransport

SDP = "v=0\r\n" + "a=candidate:1 1 udp 2122260223 10.0.0.1 50000 typ host\r\n" * 20
BODY = {
    "messaging_product": "whatsapp",
    "action": "accept",
    "call_id": "wacid.bench",
    "session": {"sdp_type": "answer", "sdp": SDP},
}
SERVER = """
import sys
from aiohttp import web
async def calls(request):
    await request.read()
    return web.json_response({"success": True})
app = web.Application()
app.router.add_post("/{phone}/calls", calls)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


async def cpu_per_request(send: Callable[[], Awaitable[object]], requests: int) -> float:
    for _ in range(20):
        await send()
    cpu = time.process_time()
    for _ in range(requests):
        await send()
    return (time.process_time() - cpu) / requests * 1000


async def main(requests: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVER, str(port))
    url = f"http://127.0.0.1:{port}/"
    try:
        async with httpx.AsyncClient() as probe:
            for _ in range(100):
                try:
                    await probe.get(url)
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        rows = []
        for name, transport in (
            ("httpx, its own transport (before)", httpx.AsyncHTTPTransport()),
            ("httpx on AiohttpTransport (now)", AiohttpTransport()),
        ):
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": "Bearer x"}, transport=transport
            ) as client:

                async def send(client: httpx.AsyncClient = client) -> object:
                    return (await client.post("106540352242922/calls", json=BODY)).json()

                rows.append((name, await cpu_per_request(send, requests)))
        async with aiohttp.ClientSession() as session:

            async def send_aiohttp() -> object:
                async with session.post(f"{url}106540352242922/calls", json=BODY) as r:
                    return await r.json()

            rows.append(("aiohttp alone", await cpu_per_request(send_aiohttp, requests)))
    finally:
        server.terminate()
        await server.wait()
    print(f"CPU of this process per Graph request ({requests} POSTs, ~1.5 kB body, kept alive)")
    for name, ms in rows:
        print(f"  {name:<36} {ms:6.3f} ms   {ms / rows[0][1]:5.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    asyncio.run(main(parser.parse_args().requests))
