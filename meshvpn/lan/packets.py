"""Which inner IPv4 packets are for whom: this node, the whole mesh, a multicast group, or nobody.

The mesh is one link, as a LAN is: a broadcast or multicast packet reaches every member of the
link with its TTL untouched (a switch does not route), a packet with TTL 0 is never sent or
accepted, and only the node that originated a packet fans it out, so nothing loops.

Inbound (after decryption) a node delivers only what is addressed to it: its own overlay
address, the network's broadcast address, 255.255.255.255, all-hosts 224.0.0.1, or a group one
of its applications joined. Anything else (a peer aiming at the node's LAN or docker bridge
through the tunnel) is dropped and counted. `parse` raises only `BadPacket`.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Container

from meshvpn.errors import RemoteProtocolError
from meshvpn.checksum import internet_checksum

PROTO_ICMP = 1
PROTO_IGMP = 2
PROTO_TCP = 6
PROTO_UDP = 17

LIMITED_BROADCAST = 0xFFFFFFFF
ALL_HOSTS = 0xE0000001  # 224.0.0.1: every multicast-capable host, never reported in IGMP
ALL_NODES6 = 0xFF02 << 112 | 1  # ff02::1: IPv6's all-nodes, never reported in MLD
_MULTICAST_MASK, _MULTICAST_NET = 0xF0000000, 0xE0000000
_MORE_FRAGMENTS, _OFFSET_MASK = 0x2000, 0x1FFF
_HEADER = struct.Struct("!BBHHHBBH4s4s")
_PORTS = struct.Struct("!HH")


class BadPacket(RemoteProtocolError):
    """An inner packet is not a well-formed IPv4 packet."""


class Cast(enum.Enum):
    """Where an IPv4 destination points, seen from one node of the mesh."""

    SELF = "self"
    BROADCAST = "broadcast"
    """The overlay network's directed broadcast address, e.g. 100.64.0.255 for 100.64.0.0/24."""
    LIMITED_BROADCAST = "limited broadcast"
    """255.255.255.255: this link only."""
    MULTICAST = "multicast"
    UNICAST = "unicast"
    """Another single address: a peer's, or one the mesh does not carry."""


class Drop(enum.Enum):
    """Why a packet was not delivered or not sent; the value is the counter's label."""

    MALFORMED = "malformed"
    TTL = "ttl_expired"
    NOT_FOR_ME = "not_for_me"
    SPOOFED = "source_not_peer"
    NOT_JOINED = "group_not_joined"
    NOT_OURS = "not_originated_here"


@dataclass(frozen=True, slots=True)
class Header:
    """The fields of an IPv4 (or IPv6) packet that delivery, fan-out and access rules look at."""

    src: int
    dst: int
    proto: int
    ttl: int
    length: int
    """Total length from the header (the packet may carry padding after it)."""
    first_fragment: bool
    """False for a fragment after the first: it carries no transport header."""
    fragmented: bool
    """Part of a fragmented datagram (more fragments follow, or this is not the first)."""
    ident: int
    sport: int | None = None
    dport: int | None = None
    """TCP/UDP ports, or for ICMP the type (sport) and code (dport); None when not carried."""
    tcp_flags: int | None = None
    version: int = 4
    """4, or 6 for a header `meshvpn.lan.packets6.parse6` read (addresses are then 128-bit)."""
    upper: int = 20
    """Where the upper-layer header starts in the packet (behind IPv6's extension headers)."""


@dataclass(frozen=True)
class Overlay:
    """This node's place in the overlay: its address and its network (IPv4, or IPv6 without a broadcast)."""

    address: int
    network: int
    broadcast: int | None
    version: int = 4

    @classmethod
    def of(cls, address: str, cidr: str) -> Overlay:
        net = ipaddress.ip_network(cidr, strict=False)
        own = ipaddress.ip_address(address)
        if own.version != net.version:
            raise ValueError(f"{address} is not an address of {cidr}")
        broadcast = int(net.broadcast_address) if net.version == 4 else None
        return cls(int(own), int(net.network_address), broadcast, net.version)


def parse(packet: bytes | bytearray | memoryview) -> Header:
    """Read the IPv4 header (and the ports of a first fragment); raises only `BadPacket`."""
    if len(packet) < 20:
        raise BadPacket(f"{len(packet)} bytes is shorter than an IPv4 header")
    vihl, _tos, length, _ident, frag, ttl, proto, _csum, src, dst = _HEADER.unpack_from(packet)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4:
        raise BadPacket(f"IP version {vihl >> 4}, not 4")
    if ihl < 20 or length < ihl or length > len(packet):
        raise BadPacket(f"bad lengths: header {ihl}, total {length}, have {len(packet)}")
    first = frag & _OFFSET_MASK == 0
    fragmented = not first or bool(frag & _MORE_FRAGMENTS)
    sport, dport, flags = transport_fields(packet, ihl, length, proto, PROTO_ICMP) if first else _NO_FIELDS
    return Header(int.from_bytes(src, "big"), int.from_bytes(dst, "big"), proto, ttl, length, first,
                  fragmented, _ident, sport, dport, flags, 4, ihl)


_NO_FIELDS: tuple[None, None, None] = (None, None, None)


def transport_fields(packet, at: int, length: int, proto: int, icmp: int) -> tuple[int | None, int | None, int | None]:
    """(sport, dport, TCP flags) of the upper-layer header at ``packet[at:length]``: TCP/UDP ports, or the
    type and code of `icmp` (ICMP, or ICMPv6 for IPv6); None for what the packet is too short to carry."""
    if proto in (PROTO_TCP, PROTO_UDP) and length >= at + 4:
        sport, dport = _PORTS.unpack_from(packet, at)
        return sport, dport, packet[at + 13] if proto == PROTO_TCP and length >= at + 14 else None
    if proto == icmp and length >= at + 2:
        return packet[at], packet[at + 1], None
    return _NO_FIELDS


def is_multicast(address: int) -> bool:
    return address & _MULTICAST_MASK == _MULTICAST_NET


def is_multicast6(address: int) -> bool:
    return address >> 120 == 0xFF


def classify(header: Header, overlay: Overlay) -> Cast:
    dst = header.dst
    if dst == overlay.address:
        return Cast.SELF
    if header.version == 6:
        return Cast.MULTICAST if is_multicast6(dst) else Cast.UNICAST
    if dst == LIMITED_BROADCAST:
        return Cast.LIMITED_BROADCAST
    if dst == overlay.broadcast:
        return Cast.BROADCAST
    if is_multicast(dst):
        return Cast.MULTICAST
    return Cast.UNICAST


def inbound(header: Header, overlay: Overlay, joined: Container[int], peer_address: int) -> Cast | Drop:
    """What to do with a packet the peer at `peer_address` sent: the Cast to deliver it as, or
    why to drop it. A peer speaks only for its own address, so access rules can trust sources."""
    if header.src != peer_address:
        return Drop.SPOOFED
    if header.ttl == 0:
        return Drop.TTL
    cast = classify(header, overlay)
    if cast is Cast.UNICAST:
        return Drop.NOT_FOR_ME
    if cast is Cast.MULTICAST and header.dst not in (ALL_HOSTS, ALL_NODES6) and header.dst not in joined:
        return Drop.NOT_JOINED
    return cast


def outbound(header: Header, overlay: Overlay) -> Cast | Drop:
    """What to do with a packet read from the TUN: UNICAST goes the usual way to one peer,
    BROADCAST, LIMITED_BROADCAST and MULTICAST are fanned out; IGMP goes to the membership
    table (`meshvpn.lan.groups`), never to peers."""
    cast = classify(header, overlay)
    if cast is Cast.UNICAST or cast is Cast.SELF:
        return cast
    if header.src != overlay.address:
        return Drop.NOT_OURS
    if header.ttl == 0:
        return Drop.TTL
    return cast


def ipv4(src: int, dst: int, proto: int, payload: bytes, ttl: int = 64, options: bytes = b"",
         ident: int = 0, frag: int = 0x4000) -> bytes:
    """An IPv4 packet with a correct header checksum (`options` padded to 4 bytes by the caller;
    `frag` is the flags and offset field, don't-fragment by default)."""
    ihl = 20 + len(options)
    header = bytearray(_HEADER.pack(0x40 | ihl // 4, 0xC0 if proto == PROTO_IGMP else 0, ihl + len(payload), ident,
                                    frag, ttl, proto, 0, src.to_bytes(4, "big"), dst.to_bytes(4, "big")) + options)
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header) + payload
