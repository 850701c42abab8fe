"""ICMP and ICMPv6 errors, and the header of the packet each one quotes.

Why: an error (Destination Unreachable, Packet Too Big, Time Exceeded, Parameter Problem) is how
a peer tells this node that one of its packets did not get through: path MTU discovery and a
refused connection's fast failure depend on it arriving. A stateful firewall lets an error in as
*related* when the packet it quotes belongs to a flow it allows (Linux conntrack's RELATED), so
`meshvpn.lan.access` asks here for the quoted header and judges the flow it names.

The quote starts 8 bytes into the ICMP message (type, code, checksum and 4 bytes of type-specific
data): the IP header of the packet as this node sent it, then as much of the rest as fits (at least
8 bytes in ICMP, RFC 792; as much as fits in 1280 in ICMPv6, RFC 4443). Its length fields name the
whole original packet, so the quote is read up to where the error ends. Sans-IO; a quote that is
not a readable IP header is no quote (None): the error itself was well formed, and the rules decide.
"""

from __future__ import annotations

from meshvpn.lan.packets import PROTO_ICMP, BadPacket, Header
from meshvpn.lan.packets6 import PROTO_ICMPV6, parse_any

ERROR_TYPES = {PROTO_ICMP: frozenset({3, 11, 12}), PROTO_ICMPV6: frozenset({1, 2, 3, 4})}
"""Destination Unreachable, Time Exceeded, Parameter Problem (ICMP: 3, 11, 12), and Packet Too Big
(ICMPv6: 1, 3, 4 and 2). Source Quench and Redirect are deprecated or change routes: not errors here."""
QUOTE_AT = 8
"""Bytes of the ICMP message before the quoted packet."""


def is_error(header: Header) -> bool:
    """Whether ``header`` is an ICMP error (ICMPv6 for IPv6): its type is in ``sport``."""
    return header.first_fragment and header.sport in ERROR_TYPES.get(header.proto, ())


def quoted(packet: bytes | bytearray | memoryview, header: Header) -> Header | None:
    """The header of the packet the error ``header`` (parsed from ``packet``) quotes; None if it is no
    error or its quote cannot be read."""
    if not is_error(header) or header.version != (4 if header.proto == PROTO_ICMP else 6):
        return None
    quote = bytearray(packet[header.upper + QUOTE_AT : header.length])
    if len(quote) < 20 or quote[0] >> 4 != header.version:
        return None
    if header.version == 4:
        quote[2:4] = min(int.from_bytes(quote[2:4], "big"), len(quote)).to_bytes(2, "big")
    elif len(quote) >= 40:
        quote[4:6] = min(int.from_bytes(quote[4:6], "big"), len(quote) - 40).to_bytes(2, "big")
    try:
        return parse_any(quote)
    except BadPacket:
        return None
