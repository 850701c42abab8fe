"""STUN Binding answers on the relay's UDP port: the second server of a node's mapping test.

A node learns whether its NAT maps endpoint-independently by comparing the mapped endpoint two
servers at different addresses see from one socket (RFC 5780 §4.3, with the relay as the
"alternate IP"). Deployments usually give the coord one address, but every node already knows a
relay; so the relay answers Binding requests as Tailscale's DERP servers do. Only the mapped
address is told: the relay has no alternate socket, and a CHANGE-REQUEST gets 420.

The relay core hands over what is not a meshvpn message; this answers what `is_stun` accepts,
at most `PER_SOURCE_RATE` a second per source prefix (an IPv4 address or an IPv6 /64) and
`TOTAL_RATE` in all, so that a spoofed flood makes the relay reflect little. Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Hashable, Union

from meshvpn.prefixcap import prefixes
from meshvpn.ratelimit import SourceLimiter
from meshvpn.stun import binding_response, is_stun
from meshvpn.wire import Endpoint

PER_SOURCE_RATE = 10.0
"""Answers a second to one source prefix: a node asks once per endpoint refresh, a NAT of many
nodes stays far below."""
PER_SOURCE_BURST = 50.0
TOTAL_RATE = 2000.0
"""Answers a second in all, whatever the number of sources."""
TOTAL_BURST = 4000.0

Send = Callable[[Endpoint, bytes], None]


class StunAnswerer:
    """Answers Binding requests from UDP sources; counts what it did in `answered` and `drops`."""

    def __init__(self, drops: Counter, now: float) -> None:
        self.drops = drops
        """The relay's drop counter, shared: refused STUN requests show beside its other drops."""
        self.answered = 0
        """Binding success (or 420) responses sent."""
        self._limiter = SourceLimiter(PER_SOURCE_RATE, PER_SOURCE_BURST, TOTAL_RATE, TOTAL_BURST, now)

    def answer(self, data: Union[bytes, bytearray, memoryview], link: Hashable, now: float, send: Send) -> bool:
        """Answer `data` from `link` through `send` if it is a STUN request; False if it is not STUN at all.

        `link` is a UDP endpoint; anything else (a TCP stream of the relay) never gets STUN.
        """
        if not isinstance(link, tuple) or not is_stun(data):
            return False
        if not self._limiter.allow(prefixes(link[0])[0], now):
            self.drops["STUN rate limited"] += 1
            return True
        reply = binding_response(bytes(data), (link[0], link[1]))
        if reply is None:
            self.drops["STUN not a Binding request"] += 1
            return True
        self.answered += 1
        send(reply.send_to, reply.data)
        return True
