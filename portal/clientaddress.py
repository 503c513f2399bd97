"""The client's network address, for the login lockout and the access records.

X-Forwarded-For is written by whoever sends the request, so it is believed only when the
peer that sent it is one of the configured proxies (TRUSTED_PROXIES): the address is
taken from the right of the header, one entry per trusted proxy it passed through (at
most NUM_PROXIES), stopping at the first address that is not a trusted proxy. A client
that reaches the portal directly (port 8000 published) cannot choose its address by
sending the header.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from django.http import HttpRequest

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: list[str]) -> tuple[IPNetwork, ...]:
    """Addresses or networks (10.0.0.5, 10.0.0.0/24, fd00::/8); ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address or network (such as 10.0.0.5 or "
                "10.0.0.0/24)"
            ) from None
    return tuple(networks)


@lru_cache(maxsize=8)
def _trusted(values: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return parse_networks(list(values))


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [::1]:443
        value = value[1 : value.index("]")]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def is_trusted_proxy(address: str) -> bool:
    parsed = _address(address)
    if parsed is None:
        return False
    return any(
        parsed in network for network in _trusted(tuple(settings.TRUSTED_PROXIES))
    )


def client_address(request: HttpRequest | None) -> str | None:
    """The client's address, or None when there is none that parses."""
    if request is None:
        return None
    peer = _address(str(request.META.get("REMOTE_ADDR", "")))
    if peer is None:
        return None
    forwarded = [
        part.strip()
        for part in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")
        if part.strip()
    ]
    address = peer
    for _ in range(settings.NUM_PROXIES):
        if not forwarded or not is_trusted_proxy(str(address)):
            break
        previous = _address(forwarded.pop())
        if previous is None:
            break  # a proxy we trust wrote something that is not an address
        address = previous
    return str(address)
