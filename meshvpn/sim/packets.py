"""Inner packets for tests of the LAN-party cores: UDP, TCP, ICMP echo and errors, IGMP reports; UDP, TCP, ICMPv6 echo
and errors, MLD reports over IPv6."""

from __future__ import annotations

import ipaddress
import struct

from meshvpn.lan import igmp
from meshvpn.lan.packets import PROTO_ICMP, PROTO_IGMP, PROTO_TCP, PROTO_UDP, ipv4
from meshvpn.checksum import internet_checksum

SYN, ACK = 0x02, 0x10


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"", ttl: int = 64, **ip_fields: int) -> bytes:
    """A UDP datagram (UDP checksum left zero, which IPv4 allows)."""
    return ipv4(ip(src), ip(dst), PROTO_UDP, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload,
                ttl=ttl, **ip_fields)


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = SYN) -> bytes:
    """A bare TCP segment with `flags` (checksum not computed)."""
    return ipv4(ip(src), ip(dst), PROTO_TCP, struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, flags, 65535, 0, 0))


def icmp_echo(src: str, dst: str, reply: bool = False) -> bytes:
    body = bytearray(struct.pack("!BBHHH", 0 if reply else 8, 0, 0, 1, 1))
    body[2:4] = internet_checksum(body).to_bytes(2, "big")
    return ipv4(ip(src), ip(dst), PROTO_ICMP, bytes(body))


def icmp_error(src: str, dst: str, about: bytes, kind: int = 3, code: int = 3, data: int = 0) -> bytes:
    """An ICMP error (Port Unreachable by default; ``data`` is the next-hop MTU of a Fragmentation
    Needed) quoting the IP header and first 8 bytes of its payload of ``about``, as RFC 792 asks."""
    quote = about[: (about[0] & 0x0F) * 4 + 8]
    body = bytearray(struct.pack("!BBHI", kind, code, 0, data) + quote)
    body[2:4] = internet_checksum(body).to_bytes(2, "big")
    return ipv4(ip(src), ip(dst), PROTO_ICMP, bytes(body))


def igmp_message(src: str, dst: str, body: bytes) -> bytes:
    """An IGMP message as the kernel sends it: TTL 1, router alert, checksum filled in."""
    body = bytearray(body)
    body[2:4] = internet_checksum(body).to_bytes(2, "big")
    return ipv4(ip(src), ip(dst), PROTO_IGMP, bytes(body), ttl=1, options=b"\x94\x04\x00\x00")


def igmp_v2(src: str, kind: int, group: str) -> bytes:
    """A v1/v2 report (`igmp.V1_REPORT`, `igmp.V2_REPORT`) or a v2 leave (`igmp.V2_LEAVE`)."""
    dst = "224.0.0.2" if kind == igmp.V2_LEAVE else group
    return igmp_message(src, dst, struct.pack("!BBH4s", kind, 0, 0, ipaddress.IPv4Address(group).packed))


def igmp_v3(src: str, *records: tuple[int, str, tuple[str, ...]]) -> bytes:
    """A v3 report of (record type, group, sources) records, to 224.0.0.22."""
    body = struct.pack("!BBHHH", igmp.V3_REPORT, 0, 0, 0, len(records))
    for kind, group, sources in records:
        body += struct.pack("!BBH4s", kind, 0, len(sources), ipaddress.IPv4Address(group).packed)
        body += b"".join(ipaddress.IPv4Address(source).packed for source in sources)
    return igmp_message(src, "224.0.0.22", body)


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def ipv6(src: str, dst: str, proto: int, payload: bytes, hops: int = 64, extensions: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """An IPv6 packet of `proto` carrying `payload` behind `extensions`: (type, body) pairs, each
    body padded to its header's 8-byte units (a fragment header's body is its 6 bytes after the
    next-header and reserved ones)."""
    chain, next_headers = b"", [kind for kind, _ in extensions] + [proto]
    for (kind, body), following in zip(extensions, next_headers[1:]):
        if kind == 44:
            chain += bytes([following, 0]) + body[:6].ljust(6, b"\0")
        else:
            body = body.ljust(-(-(len(body) + 2) // 8) * 8 - 2, b"\0")
            chain += bytes([following, (len(body) + 2) // 8 - 1]) + body
    rest = chain + payload
    return struct.pack("!IHBB", 0x60000000, len(rest), next_headers[0], hops) + ip6(src) + ip6(dst) + rest


def udp6(src: str, dst: str, sport: int, dport: int, payload: bytes = b"", **fields) -> bytes:
    """A UDP datagram over IPv6 (checksum left zero: nothing on the data path checks it)."""
    return ipv6(src, dst, PROTO_UDP, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload, **fields)


def tcp6(src: str, dst: str, sport: int, dport: int, flags: int = SYN, **fields) -> bytes:
    return ipv6(src, dst, PROTO_TCP, struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, flags, 65535, 0, 0), **fields)


def icmp6_echo(src: str, dst: str, reply: bool = False, **fields) -> bytes:
    """An ICMPv6 echo request (128) or reply (129); checksum left zero."""
    return ipv6(src, dst, 58, struct.pack("!BBHHH", 129 if reply else 128, 0, 0, 1, 1), **fields)


def icmp6_error(src: str, dst: str, about: bytes, kind: int = 2, code: int = 0, data: int = 1280, **fields) -> bytes:
    """An ICMPv6 error (Packet Too Big by default; ``data`` its MTU) quoting as much of ``about`` as
    fits in 1280 bytes (RFC 4443); checksum left zero."""
    return ipv6(src, dst, 58, struct.pack("!BBHI", kind, code, 0, data) + about[:1280 - 48], **fields)


def mld_message(src: str, dst: str, body: bytes) -> bytes:
    """An MLD message as the kernel sends it: hop limit 1, a Router Alert option, the ICMPv6 checksum filled in."""
    packet = bytearray(ipv6(src, dst, 58, body, hops=1, extensions=((0, b"\x05\x02\x00\x00\x01\x00"),)))
    pseudo = int.from_bytes(packet[8:40], "big") + len(body) + 58
    packet[50:52] = internet_checksum(packet[48:], pseudo).to_bytes(2, "big")
    return bytes(packet)


def mld_v1(src: str, kind: int, group: str) -> bytes:
    """An MLDv1 report (131, to the group) or done (132, to all routers ff02::2)."""
    return mld_message(src, "ff02::2" if kind == 132 else group, struct.pack("!BBHHH", kind, 0, 0, 0, 0) + ip6(group))


def mld_v2(src: str, *records: tuple[int, str, tuple[str, ...]]) -> bytes:
    """An MLDv2 report to ff02::16 with (record type, group, sources) records."""
    body = struct.pack("!BBHHH", 143, 0, 0, 0, len(records))
    for kind, group, sources in records:
        body += struct.pack("!BBH", kind, 0, len(sources)) + ip6(group) + b"".join(ip6(s) for s in sources)
    return mld_message(src, "ff02::16", body)
