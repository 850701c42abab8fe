"""What a node announces over IPv6: its global addresses with its port, and its IPv6 mapping as
STUN saw it when that differs (a prefix translator between it and the internet).

Apart from `meshvpn.node.ipv6`, which finds the addresses and asks STUN, so that the simulator's
nodes announce as the daemon's do.
"""

from __future__ import annotations

from typing import Iterable, Optional

from meshvpn.control import messages as m
from meshvpn.wire import Endpoint


def announced(local: Iterable[Endpoint], mapped: Optional[Endpoint]) -> tuple[m.Endpoint, ...]:
    """Everything we announce over IPv6: the global addresses, and the STUN mapping when it differs,
    at most MAX_IPV6_ENDPOINTS."""
    found = list(local) + ([mapped] if mapped is not None else [])
    return tuple(m.Endpoint(e.host, e.port) for e in dict.fromkeys(found))[:m.MAX_IPV6_ENDPOINTS]
