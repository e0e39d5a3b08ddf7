"""Pure helpers about source addresses: per-IP keys and trusted ranges.

No I/O here (only :mod:`ipaddress`): the hub counts connections per
:func:`source_key`, and the UDP room checks :func:`in_networks` against the
ranges it trusts (:data:`LOOPBACK` by default).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["LOOPBACK", "IPNetwork", "in_networks", "parse_networks", "source_key"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Sources that cannot be forged from another host: Linux drops packets that
#: arrive from outside with a loopback source address.
LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"))


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """*ip* parsed (an IPv4-mapped IPv6 address as IPv4), or ``None`` if it is not an address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def source_key(ip: str, ipv6_prefix: int) -> str:
    """The key under which connections from *ip* are counted for ``Limits.max_per_ip``.

    An IPv4 address counts alone (``"192.0.2.7"``); an IPv6 address counts
    with every address of its */ipv6_prefix* network (``"2001:db8:1:2::/64"``
    for prefix 64; the address itself, compressed, for 128).  An IPv4-mapped
    IPv6 address counts as its IPv4 address.  A string that is not an IP
    address is its own key.  Raises :class:`ValueError` unless
    ``1 <= ipv6_prefix <= 128``.
    """
    if not 1 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be between 1 and 128, not {ipv6_prefix!r}")
    if ":" not in ip:  # IPv4 (the common case: no parsing), or not an address at all
        return ip
    address = _address(ip)
    if address is None:
        return ip
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    shift = 128 - ipv6_prefix
    network = ipaddress.IPv6Address(int(address) >> shift << shift)  # drops any %scope too
    return network.compressed if ipv6_prefix == 128 else f"{network.compressed}/{ipv6_prefix}"


def parse_networks(specs: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    """Networks from CIDR strings (``"10.0.0.0/8"``, ``"::1"``) or network objects.

    Raises :class:`ValueError` naming the bad entry (host bits set, as in
    ``"10.0.0.1/8"``, are an error too).
    """
    if isinstance(specs, str):
        raise TypeError("give a sequence of CIDR strings, not one string")
    networks: list[IPNetwork] = []
    for spec in specs:
        if isinstance(spec, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(spec)
            continue
        try:
            networks.append(ipaddress.ip_network(spec.strip()))
        except ValueError as exc:
            raise ValueError(f"not an address range: {spec!r} ({exc})") from None
    return tuple(networks)


def in_networks(ip: str, networks: Iterable[IPNetwork]) -> bool:
    """Whether *ip* lies in one of *networks* (an IPv4-mapped IPv6 address as IPv4)."""
    address = _address(ip)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        address = ipaddress.IPv6Address(int(address))
    return any(address.version == network.version and address in network for network in networks)
