"""The userspace NAT's sans-IO parts: mapping table and packet rewriting, checksums included."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.lab.usernat import ICMP, UDP, NatTable, Translator
from meshvpn.sim.nat import FULL_CONE, SYMMETRIC_SEQUENTIAL, NatBehavior, PortAllocation

WAN, LAN_NET, LAN_HOST, REMOTE = "203.0.113.100", "10.1.0.0/24", "10.1.0.11", "203.0.113.10"


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_packet(proto: int, src: str, dst: str, l4: bytes) -> bytearray:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return bytearray(header + l4)


def udp_packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytearray:
    length = 8 + len(payload)
    pseudo = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!BBH", 0, UDP, length)
    body = struct.pack("!HHHH", src[1], dst[1], length, 0) + payload
    csum = checksum(pseudo + body) or 0xFFFF
    return ip_packet(UDP, src[0], dst[0], body[:6] + struct.pack("!H", csum) + body[8:])


def valid(packet: bytes) -> bool:
    """IP header and UDP/TCP checksums verify."""
    proto, length = packet[9], len(packet) - 20
    pseudo = packet[12:20] + struct.pack("!BBH", 0, proto, length)
    return checksum(packet[:20]) == 0 and checksum(pseudo + packet[20:]) == 0


def endpoints(packet: bytes) -> tuple[tuple[str, int], tuple[str, int]]:
    sport, dport = struct.unpack_from("!HH", packet, 20)
    return (socket.inet_ntoa(packet[12:16]), sport), (socket.inet_ntoa(packet[16:20]), dport)


def translator(behavior: NatBehavior) -> Translator:
    return Translator(NatTable(behavior, lambda low, high: low), WAN, LAN_NET)


@settings(max_examples=200)
@given(sport=st.integers(1, 65535), dport=st.integers(1, 65535), payload=st.binary(max_size=64))
def test_translated_udp_keeps_valid_checksums_both_ways(sport: int, dport: int, payload: bytes) -> None:
    nat = translator(SYMMETRIC_SEQUENTIAL)
    out = nat.translate(udp_packet((LAN_HOST, sport), (REMOTE, dport), payload), now=0.0)
    assert out is not None and valid(out)
    public, remote = endpoints(out)
    assert public == (WAN, 30001) and remote == (REMOTE, dport)
    back = nat.translate(udp_packet((REMOTE, dport), public, payload), now=1.0)
    assert back is not None and valid(back)
    assert endpoints(back) == ((REMOTE, dport), (LAN_HOST, sport))


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_garbage_from_the_tun_device_is_dropped_not_raised(data: bytes) -> None:
    nat = translator(FULL_CONE)
    result = nat.translate(bytearray(data), now=0.0)
    assert result is None or isinstance(result, bytearray)


def test_filtering_and_expiry() -> None:
    nat = translator(SYMMETRIC_SEQUENTIAL)
    out = nat.translate(udp_packet((LAN_HOST, 5000), (REMOTE, 7000), b"x"), now=0.0)
    public, _ = endpoints(out)
    assert nat.translate(udp_packet((REMOTE, 7001), public, b"x"), now=1.0) is None
    assert nat.translate(udp_packet((REMOTE, 7000), public, b"x"), now=1.0) is not None
    assert nat.translate(udp_packet((REMOTE, 7000), public, b"x"), now=31.0) is None
    assert nat.drops == {"filtered or no mapping": 2}


def test_port_allocation_kinds() -> None:
    def first_ports(ports: PortAllocation, lan_ports: list[int]) -> list[int]:
        table = NatTable(NatBehavior(ports=ports, port_base=30000), lambda low, high: 40000)
        return [table.outbound(UDP, (LAN_HOST, p), (REMOTE, 1), 0.0).port for p in lan_ports]

    assert first_ports(PortAllocation.PRESERVE, [5000, 5001]) == [5000, 5001]
    assert first_ports(PortAllocation.SEQUENTIAL, [5000, 9000]) == [30001, 30002]
    assert first_ports(PortAllocation.RANDOM, [5000, 5001]) == [40000, 40001]
    assert first_ports(PortAllocation.RANGE_OFFSET, [1414, 1415]) == [31414, 31415]


def test_icmp_echo_identifier_is_translated() -> None:
    nat = translator(SYMMETRIC_SEQUENTIAL)
    body = struct.pack("!BBHHH", 8, 0, 0, 77, 1) + b"ping"
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    out = nat.translate(ip_packet(ICMP, LAN_HOST, REMOTE, body), now=0.0)
    assert out is not None and checksum(bytes(out[20:])) == 0
    assert struct.unpack_from("!H", out, 24)[0] == 30001
    reply = bytearray(out[20:])
    reply[0] = 0
    reply[2:4] = b"\0\0"
    reply[2:4] = struct.pack("!H", checksum(bytes(reply)))
    back = nat.translate(ip_packet(ICMP, REMOTE, WAN, bytes(reply)), now=0.5)
    assert back is not None and struct.unpack_from("!H", back, 24)[0] == 77
    assert checksum(bytes(back[20:])) == 0
