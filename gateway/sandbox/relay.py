"""Meta's media edge in the sandbox: a UDP relay between the browser and the gateway.

Both sides see only the relay's 127.0.0.1 addresses, never each other, as a
business only ever talks to Meta's servers. ICE, DTLS and SRTP pass through
untouched, end to end.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import SDPError

Address = tuple[str, int]


def is_loopback(address: str) -> bool:
    """Whether ``address`` is a literal loopback address (names are not)."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class _Side(asyncio.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes, Address], None]) -> None:
        self.receive = receive

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.receive(data, (addr[0], addr[1]))


@dataclass(frozen=True)
class Impairment:
    """A bad network on the media path: each RTP/RTCP datagram, both ways, is lost
    with probability ``loss`` or else delayed by 0 to ``jitter_ms`` (so reordered).
    ICE and DTLS pass untouched: the fault under test is the media's."""

    loss: float = 0.0
    jitter_ms: float = 0.0
    seed: int = 1


@dataclass
class RelayStats:
    """What the media edge forwarded, and what it refused."""

    to_gateway: int = 0
    to_browser: int = 0
    dropped: int = 0
    dropped_from: set[str] = field(default_factory=set)
    lost: int = 0
    """Media datagrams the impairment dropped."""


class MediaRelay:
    """Meta's media edge, reduced to forwarding datagrams between browser and gateway.

    The gateway talks to one address (``gateway_side``) and the browser to another
    (``browser_side``), both on 127.0.0.1, as a business talks only to Meta's
    servers. ICE, DTLS and SRTP pass through untouched, end to end. Datagrams from
    addresses the browser did not offer are dropped, so ICE can only succeed on
    the browser's offered (loopback) candidate: Chromium otherwise prefers to
    send from its Ethernet address, whose network cost it ranks lower.
    """

    def __init__(self, browser: list[Address], impairment: Impairment | None = None) -> None:
        # The edge listens on 127.0.0.1, so it talks to the browser over IPv4.
        browser = [c for c in browser if ":" not in c[0]]
        if not browser:
            raise SDPError("the offer has no IPv4 UDP host candidate")
        self.browser = browser[0]
        self.allowed = frozenset(host for host, _ in browser)
        self.gateway: Address | None = None
        self.stats = RelayStats()
        self.impairment = impairment
        self._random = random.Random(impairment.seed if impairment else 0)
        self._to_gateway: asyncio.DatagramTransport | None = None
        self._to_browser: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        """Open both sockets on 127.0.0.1."""
        loop = asyncio.get_running_loop()
        try:
            self._to_gateway, _ = await loop.create_datagram_endpoint(
                lambda: _Side(self._from_gateway), local_addr=("127.0.0.1", 0)
            )
            self._to_browser, _ = await loop.create_datagram_endpoint(
                lambda: _Side(self._from_browser), local_addr=("127.0.0.1", 0)
            )
        except OSError:
            self.close()
            raise

    @property
    def gateway_side(self) -> Address:
        """The address the gateway sends to (the offer's candidate)."""
        assert self._to_gateway is not None, "relay not started"
        host, port = self._to_gateway.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    @property
    def browser_side(self) -> Address:
        """The address the browser sends to (the answer's candidate)."""
        assert self._to_browser is not None, "relay not started"
        host, port = self._to_browser.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def _from_gateway(self, data: bytes, addr: Address) -> None:
        # The gateway has one candidate (GATEWAY_MEDIA_ADDRESSES=127.0.0.1): one sender.
        known = self.gateway is None or addr == self.gateway
        if not known or not is_loopback(addr[0]) or self._to_browser is None:
            self._drop(addr)
            return
        self.gateway = addr
        self.stats.to_browser += 1
        self._send(self._to_browser, data, self.browser)

    def _from_browser(self, data: bytes, addr: Address) -> None:
        if addr[0] not in self.allowed or self.gateway is None or self._to_gateway is None:
            self._drop(addr)
            return
        self.browser = addr  # follow the candidate the browser's ICE agent settles on
        self.stats.to_gateway += 1
        self._send(self._to_gateway, data, self.gateway)

    def _send(self, transport: asyncio.DatagramTransport, data: bytes, to: Address) -> None:
        bad = self.impairment
        # RTP and RTCP start with version 2 (RFC 7983: first byte 128-191).
        if bad is None or not data or not 128 <= data[0] <= 191:
            transport.sendto(data, to)
            return
        if self._random.random() < bad.loss:
            self.stats.lost += 1
            return
        delay = self._random.uniform(0.0, bad.jitter_ms / 1000)
        asyncio.get_running_loop().call_later(delay, self._send_late, transport, data, to)

    @staticmethod
    def _send_late(transport: asyncio.DatagramTransport, data: bytes, to: Address) -> None:
        if not transport.is_closing():
            transport.sendto(data, to)

    def _drop(self, addr: Address) -> None:
        self.stats.dropped += 1
        self.stats.dropped_from.add(addr[0])

    def close(self) -> None:
        """Close both sockets."""
        for transport in (self._to_gateway, self._to_browser):
            if transport is not None:
                transport.close()
