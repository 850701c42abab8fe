"""What the native thread may pass without asking the access filter: its decisions, by flow.

Why: the filter (`meshvpn.lan.access`) is the one place that decides, and it lives in Python;
asking it for every packet would send every packet of a network with rules through Python. As a
kernel's or OVS's fast-path cache, the filter notes here what it decided, and the native loop
(`meshvpn/_fastpath_flows.c`) serves only that:

* an **inbound** flow the filter let in (a reply to a flow this node started, or a rule's
  allow), until the time that verdict may change: the flow's expiry, or for a rule
  `RULE_VERDICT_TIMEOUT` (rules only change by `configure`, which clears the cache);
* an **outbound** flow the filter tracks: the thread seals it and notes its last use, and
  :meth:`FlowCache.fold` hands that to the filter (``AccessFilter.outbound``) as if Python had
  seen the packet.

Only unfragmented TCP, UDP and ICMP packets (IPv4), and TCP, UDP and ICMPv6 packets (IPv6, behind
their extension headers as `meshvpn.lan.packets6` walks them), with their ports (type and code)
have a key; everything else, and every refusal, goes through the filter each time, so drops are
counted by rule as before. Any change of the rules or the peer map (``configure``) forgets
everything at once.

A key is 24 bytes, the same the C side makes from a packet: direction (0 in, 1 out), protocol,
IP version, a zero byte, the peer's address (source in, destination out; an IPv4 address then 12
zero bytes), then the packet's ports (TCP/UDP) or 0, type, 0, code (ICMP, ICMPv6). Sans-IO: times
are arguments.
"""

from __future__ import annotations

import struct
from typing import Callable, Iterable, Optional

from meshvpn.lan.packets import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Header
from meshvpn.lan.packets6 import PROTO_ICMPV6

KEY = struct.Struct("!BBBx16sHH")
INBOUND, OUTBOUND = 0, 1
MAX_TRACKED = 8192
"""Outbound flows remembered for the thread's notes; past that the cache starts again (the C side holds 4,096)."""
_KEYED = {4: (PROTO_TCP, PROTO_UDP, PROTO_ICMP), 6: (PROTO_TCP, PROTO_UDP, PROTO_ICMPV6)}


def flow_key(header: Header, direction: int) -> Optional[bytes]:
    """The packet's key seen from this node, or None when the cache may not serve it."""
    if header.fragmented or header.proto not in _KEYED[header.version] or header.sport is None:
        return None
    peer = header.dst if direction == OUTBOUND else header.src
    address = peer.to_bytes(4 if header.version == 4 else 16, "big")
    return KEY.pack(direction, header.proto, header.version, address, header.sport, header.dport)


class FlowCache:
    """The access filter's decisions waiting for the native thread, and the outbound flows it may note."""

    def __init__(self) -> None:
        self.installs: dict[bytes, float] = {}
        """Key → until, not yet handed to the thread."""
        self.reset = False
        """Everything the thread holds must go before the next installs."""
        self._tracked: dict[bytes, Header] = {}

    def admitted(self, header: Header, until: float) -> None:
        """The filter let ``header``'s flow in; the same verdict holds until ``until``."""
        key = flow_key(header, INBOUND)
        if key is not None:
            self.installs[key] = until

    def sent(self, header: Header, until: float) -> None:
        """The filter saw this node send ``header``; the thread may send its flow until ``until`` and note it."""
        key = flow_key(header, OUTBOUND)
        if key is None:
            return
        if key not in self._tracked and len(self._tracked) >= MAX_TRACKED:
            self._tracked.clear()
            self.forget()
        self._tracked[key] = header
        self.installs[key] = until

    def forget(self) -> None:
        """The rules or the peer map changed (or a flow was evicted): nothing decided before holds.

        The outbound flows' headers stay: what the thread noted before still extends their flows."""
        self.installs.clear()
        self.reset = True

    def take(self) -> tuple[bool, list[tuple[bytes, float]]]:
        """(forget everything first?, installs) for the thread; both cleared."""
        reset, installs = self.reset, list(self.installs.items())
        self.reset = False
        self.installs.clear()
        return reset, installs

    def fold(self, notes: Iterable[tuple[bytes, float]], outbound: Callable[[Header, float], None]) -> None:
        """Hand the thread's uses of outbound flows to the filter (``outbound(header, when)``)."""
        for key, when in notes:
            header = self._tracked.get(key)
            if header is not None:
                outbound(header, when)
