"""Which local addresses ICE offers as host candidates."""

from __future__ import annotations

import aioice.ice


def use_host_addresses(addresses: list[str]) -> None:
    """Offer exactly ``addresses`` as ICE host candidates.

    aioice gathers every interface but skips 127.0.0.1; the sandbox and the tests
    must stay on loopback, and operators may want to pin the media interface.
    """
    fixed = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses
