"""MLD, IPv6's IGMP, as a LAN router sees it: reports and dones from hosts (MLDv1 and v2), queries to them.

The kernel sends an MLD report out of `meshvpn0` when an application joins an IPv6 group (ICMPv6
131 in MLDv1, RFC 2710; 143 in MLDv2, RFC 3810) and a done (132) or a change-to-include-nothing
record when the last one leaves; it repeats its reports only when a querier asks. So, as with
IGMP (`meshvpn.lan.igmp`, whose timers MLD shares: RFC 3810 section 9 has IGMPv3's values), the
node plays querier on its TUN (`meshvpn.lan.groups`) and builds the queries here.

What never crosses the mesh: MLD itself and Neighbor Discovery (`CONTROL`: each node's own stack
answers for its TUN, and a TUN has no link layer to resolve), and groups no host reports or no
peer needs: all-nodes ff02::1 (every peer gets it anyway), interface-local ff01::/16 and the
solicited-node groups ff02::1:ffXX:XXXX of Neighbor Discovery (`reported`).

A query must come from a link-local address (RFC 3810 5.1.14: Linux drops any other), with hop
limit 1 and a Router Alert option; the node's TUN has no link-local address of its own (the daemon
turns address generation off, `meshvpn.node.datapath.tun`), so `QUERIER` is no one's.
`parse_report` takes a whole IPv6 packet and raises only `BadMld`.
"""

from __future__ import annotations

import struct

from meshvpn.checksum import internet_checksum
from meshvpn.lan import igmp
from meshvpn.lan.igmp import Report
from meshvpn.lan.packets import ALL_NODES6, BadPacket, is_multicast6
from meshvpn.lan.packets6 import HOP_BY_HOP, PROTO_ICMPV6, parse6

QUERY, V1_REPORT, V1_DONE, V2_REPORT = 130, 131, 132, 143
CONTROL = frozenset({QUERY, V1_REPORT, V1_DONE, V2_REPORT, 133, 134, 135, 136, 137, 151, 152, 153})
"""ICMPv6 types that belong to one link's own stack: MLD, Neighbor Discovery (router and neighbor
solicitations and advertisements, redirects) and Multicast Router Discovery."""
QUERIER = 0xFE80 << 112 | 0x6D76
"""fe80::6d76, the queries' source: link-local, as the kernel requires, and no node's address."""
_SOLICITED_NODE, _SOLICITED_MASK = 0xFF02 << 112 | 0x1FF << 24, ~0xFFFFFF & (1 << 128) - 1
_ROUTER_ALERT = bytes([PROTO_ICMPV6, 0, 5, 2, 0, 0, 1, 0])
"""A Hop-by-Hop Options header: Router Alert (MLD), then a PadN of 0 bytes to its 8."""


class BadMld(BadPacket):
    """An MLD message is truncated, has a bad checksum or names a group no host reports."""


def reported(group: int) -> bool:
    """Whether a host's membership of ``group`` is news to the mesh: see the module docstring."""
    return (is_multicast6(group) and group != ALL_NODES6 and group >> 112 & 0xF > 1
            and group & _SOLICITED_MASK != _SOLICITED_NODE)


def _pseudo_sum(packet, length: int) -> int:
    """The unfolded sum of ICMPv6's pseudo-header (addresses, length, next header 58)."""
    return int.from_bytes(packet[8:40], "big") + length + PROTO_ICMPV6


def parse_report(packet: bytes | bytearray | memoryview) -> Report | None:
    """The report or done in an IPv6 packet; None for other ICMPv6 (queries, ND); raises `BadMld`."""
    try:
        header = parse6(packet)
    except BadMld:
        raise
    except BadPacket as error:
        raise BadMld(str(error)) from None
    if header.proto != PROTO_ICMPV6 or header.fragmented:
        raise BadMld(f"next header {header.proto}, not an unfragmented ICMPv6 message")
    if header.sport not in (V1_REPORT, V1_DONE, V2_REPORT):
        return None
    message = bytes(packet[header.upper : header.length])
    if len(message) < 4 or internet_checksum(message, _pseudo_sum(packet, len(message))) != 0:
        raise BadMld("truncated, or a bad ICMPv6 checksum")
    if message[0] == V2_REPORT:
        return _v2_report(message)
    if len(message) < 24:
        raise BadMld(f"an MLDv1 message of {len(message)} bytes")
    group = _group(message[8:24])
    if group is None:
        return Report(1)
    return Report(1, left=frozenset({group})) if message[0] == V1_DONE else Report(1, joined=frozenset({group}))


def _v2_report(message: bytes) -> Report:
    if len(message) < 8:
        raise BadMld("truncated MLDv2 report")
    return Report(2, *igmp.records(message, 16, _group, BadMld))


def _group(raw: bytes) -> int | None:
    """A record's group, None for one that is no news to the mesh (`reported`)."""
    group = int.from_bytes(raw, "big")
    if not is_multicast6(group):
        raise BadMld(f"{group:#x} is not a multicast group")
    return group if reported(group) else None


def query(group: int = 0, source: int = QUERIER) -> bytes:
    """An MLDv2 query as an IPv6 packet: general (group 0, to ff02::1, hosts answer within 10 s) or
    multicast-address-specific (to the group, within 1 s)."""
    max_resp = int((igmp.QUERY_RESPONSE_INTERVAL if group == 0 else igmp.LAST_MEMBER_QUERY_INTERVAL) * 1000)
    body = bytearray(struct.pack("!BBHHH16sBBH", QUERY, 0, 0, max_resp, 0, group.to_bytes(16, "big"),
                                 igmp.ROBUSTNESS, int(igmp.QUERY_INTERVAL), 0))
    dst = (group or ALL_NODES6).to_bytes(16, "big")
    fixed = struct.pack("!IHBB", 0x60000000, len(_ROUTER_ALERT) + len(body), HOP_BY_HOP, 1) + source.to_bytes(16, "big") + dst
    body[2:4] = internet_checksum(body, _pseudo_sum(fixed, len(body))).to_bytes(2, "big")
    return fixed + _ROUTER_ALERT + bytes(body)
