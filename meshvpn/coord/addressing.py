"""Overlay addresses and names: stable, deterministic, never recycled while a node exists.

Addresses: the first free host address of the network's prefix, lowest first. Skipped: the
network address, the IPv4 broadcast address and the first host address (``.1`` in a /24),
which stays free for a future in-overlay service (a DNS resolver) and because people read
``.1`` as "the router". An address held by any stored node, online or not, approved or not,
revoked or not, is never handed out again.

Names: the hostname folded to a DNS label (RFC 1123: a-z, 0-9 and inner hyphens, at most 63
characters); if another node of the network holds it, ``-2``, ``-3`` ... is appended.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Collection, Container, Union

from meshvpn.errors import MeshError

RESERVED_LOW_HOSTS = 1
MAX_LABEL = 63
FALLBACK_LABEL = "node"

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class AddressPoolExhausted(MeshError):
    """Every usable address of a network's prefix is held by a node."""


def allocate_address(cidr: str, taken: Collection[str]) -> str:
    """The lowest usable address of `cidr` that is not in `taken`."""
    network = ipaddress.ip_network(cidr)
    held = {int(a) for a in map(ipaddress.ip_address, taken) if a.version == network.version}
    return first_free_address(network, held)


def first_free_address(network: IPNetwork, held: Container[int], start: int = 0) -> str:
    """The lowest usable address of `network`, from integer `start` on, whose integer is not in
    `held`; callers that track the lowest address ever freed pass it as `start`."""
    address_type = type(network.network_address)
    first = max(start, int(network.network_address) + 1 + RESERVED_LOW_HOSTS)
    last = int(network.broadcast_address) - (1 if network.version == 4 else 0)
    for candidate in range(first, last + 1):
        if candidate not in held:
            return str(address_type(candidate))
    raise AddressPoolExhausted(f"no free address left in {network}")


def dns_label(hostname: str) -> str:
    """Fold a free-form hostname into a DNS label; never empty."""
    ascii_only = "".join(c if c.isascii() and c.isalnum() else "-" for c in hostname.lower())
    label = re.sub("-+", "-", ascii_only).strip("-")[:MAX_LABEL].rstrip("-")
    return label or FALLBACK_LABEL


def unique_name(hostname: str, taken: Collection[str]) -> str:
    """`hostname` as a DNS label that is not in `taken`, suffixed -2, -3 ... if needed."""
    label = dns_label(hostname)
    number = 1
    name = label
    while name in taken:
        number += 1
        suffix = f"-{number}"
        name = label[: MAX_LABEL - len(suffix)].rstrip("-") + suffix
    return name
