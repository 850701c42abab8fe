"""The IPv6 side of `meshvpn.lan.packets`: the same `Header` read from an IPv6 packet.

Why: a network whose overlay prefix is IPv6 carries IPv6 between its nodes, and its access rules
must judge it as they judge IPv4. The fields the rules look at lie behind the extension headers,
so `parse6` walks them to the upper-layer header, the way the kernel's `ipv6_skip_exthdr` does:

* Hop-by-Hop Options (0), Routing (43) and Destination Options (60): (length + 1) * 8 bytes;
* Fragment (44): 8 bytes; a fragment whose offset is not 0 carries no upper-layer header (its
  protocol is the fragment header's next header, as an IPv4 fragment's is the header's), and the
  fragment's identification and a nonzero offset or more-fragments flag make it `fragmented`
  (a later fragment's protocol may be a header that only the first fragment carries, such as
  Destination Options: the access filter matches fragments by source and identification);
* anything else (TCP, UDP, ICMPv6, AH, ESP, No Next Header) ends the walk: that is the protocol.

At most `MAX_EXTENSIONS` extension headers; a chain that runs past the payload or is longer is
malformed. ICMPv6's type and code take the place of ports, as ICMP's do. Sans-IO; raises only
`BadPacket`. The native thread keys packets the same way (`meshvpn/_fastpath_flows.c`), which
`tests/unit/test_native_flows.py` holds byte for byte.
"""

from __future__ import annotations

import struct

from meshvpn.lan.packets import BadPacket, Header, is_multicast6, parse, transport_fields

PROTO_ICMPV6 = 58
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
HOP_BY_HOP, ROUTING, FRAGMENT, DESTINATION = 0, 43, 44, 60
_SKIPPED = (HOP_BY_HOP, ROUTING, DESTINATION)
MAX_EXTENSIONS = 8
"""Extension headers walked at most before a packet counts as malformed (the kernel walks any number)."""
_FIXED = struct.Struct("!IHBB16s16s")
_FRAGMENT = struct.Struct("!BxHI")


def parse6(packet: bytes | bytearray | memoryview) -> Header:
    """Read the IPv6 header, walk the extension headers, and take the ports (or ICMPv6 type and code)."""
    if len(packet) < 40:
        raise BadPacket(f"{len(packet)} bytes is shorter than an IPv6 header")
    first_word, payload, proto, hops, src, dst = _FIXED.unpack_from(packet)
    if first_word >> 28 != 6:
        raise BadPacket(f"IP version {first_word >> 28}, not 6")
    length = 40 + payload
    if length > len(packet):
        raise BadPacket(f"bad lengths: payload {payload}, have {len(packet) - 40}")
    at, first, fragmented, ident = 40, True, False, 0
    for _ in range(MAX_EXTENSIONS + 1):
        if proto not in _SKIPPED and proto != FRAGMENT or not first:
            break
        if at + 8 > length:
            raise BadPacket(f"extension header {proto} runs past the payload")
        if proto == FRAGMENT:
            proto, offset_flags, ident = _FRAGMENT.unpack_from(packet, at)
            first, fragmented = offset_flags >> 3 == 0, offset_flags & 0xFFF9 != 0
            at += 8
        else:
            proto, at = packet[at], at + (packet[at + 1] + 1) * 8
            if at > length:
                raise BadPacket(f"extension header runs past the payload: {at} > {length}")
    else:
        raise BadPacket(f"more than {MAX_EXTENSIONS} extension headers")
    sport, dport, flags = transport_fields(packet, at, length, proto, PROTO_ICMPV6) if first else (None, None, None)
    return Header(int.from_bytes(src, "big"), int.from_bytes(dst, "big"), proto, hops, length, first, fragmented,
                  ident, sport, dport, flags, 6, at)


def parse_any(packet: bytes | bytearray | memoryview) -> Header:
    """`parse6` for an IPv6 packet, else `meshvpn.lan.packets.parse`; raises only `BadPacket`."""
    if len(packet) and packet[0] >> 4 == 6:
        return parse6(packet)
    return parse(packet)
