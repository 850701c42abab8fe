"""Reading inner IPv6 packets for the access rules: the header behind the extension headers."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.lan.packets import PROTO_TCP, PROTO_UDP, BadPacket
from meshvpn.lan.packets6 import MAX_EXTENSIONS, PROTO_ICMPV6, is_multicast6, parse6, parse_any
from meshvpn.sim.packets import icmp6_echo, ipv6, tcp6, udp, udp6

ME6, PEER6 = "fd7a:115c:a1e0::2", "fd7a:115c:a1e0::1"


def test_parse6_reads_addresses_hops_ports_and_flags():
    parsed = parse6(tcp6(PEER6, ME6, 4000, 22, flags=0x12, hops=7))
    assert (parsed.src, parsed.dst) == (int(ipaddress.IPv6Address(PEER6)), int(ipaddress.IPv6Address(ME6)))
    assert (parsed.proto, parsed.ttl, parsed.sport, parsed.dport, parsed.tcp_flags, parsed.version) == \
        (PROTO_TCP, 7, 4000, 22, 0x12, 6)
    assert parsed.first_fragment and not parsed.fragmented


def test_the_walk_skips_options_and_routing_to_the_upper_layer():
    parsed = parse6(udp6(PEER6, ME6, 53, 5353, b"q", extensions=((0, b""), (43, b"\0\0" + bytes(12)), (60, b"x"))))
    assert (parsed.proto, parsed.sport, parsed.dport) == (PROTO_UDP, 53, 5353)
    assert parse6(icmp6_echo(PEER6, ME6, extensions=((60, b""),))).sport == 128


def test_fragments_first_later_and_atomic():
    first = parse6(udp6(PEER6, ME6, 1, 2, extensions=((44, b"\0\1\0\0\0\7"),)))
    assert (first.proto, first.sport, first.first_fragment, first.fragmented, first.ident) == (PROTO_UDP, 1, True, True, 7)
    later = parse6(udp6(PEER6, ME6, 1, 2, extensions=((44, b"\x05\x00\0\0\0\7"),)))
    assert (later.proto, later.sport, later.first_fragment, later.fragmented) == (PROTO_UDP, None, False, True)
    atomic = parse6(udp6(PEER6, ME6, 1, 2, extensions=((44, b"\0\0\0\0\0\7"),)))
    assert (atomic.sport, atomic.first_fragment, atomic.fragmented) == (1, True, False)


def test_a_long_or_broken_chain_is_malformed():
    assert parse6(udp6(PEER6, ME6, 1, 2, extensions=((60, b""),) * MAX_EXTENSIONS)).sport == 1
    packets = [udp6(PEER6, ME6, 1, 2, extensions=((60, b""),) * (MAX_EXTENSIONS + 1))]
    long_options = bytearray(udp6(PEER6, ME6, 1, 2, extensions=((60, b""),)))
    long_options[41] = 9  # 80 bytes of options in a 16-byte payload
    packets += [bytes(long_options), ipv6(PEER6, ME6, 0, b"\x11")]  # a hop-by-hop header cut short
    short = bytearray(udp6(PEER6, ME6, 1, 2))
    short[4:6] = (100).to_bytes(2, "big")
    packets += [bytes(short), b"\x60" + bytes(20), b"\x40" + bytes(60)]
    for packet in packets:
        with pytest.raises(BadPacket):
            parse6(packet)


def test_no_ports_where_the_upper_layer_is_cut_short_or_has_none():
    assert parse6(ipv6(PEER6, ME6, PROTO_UDP, b"\0\1")).sport is None
    assert parse6(ipv6(PEER6, ME6, 59, b"")).proto == 59
    assert parse6(ipv6(PEER6, ME6, PROTO_ICMPV6, b"\x02")).sport is None


def test_parse_any_reads_either_family_and_multicast6():
    assert parse_any(udp6(PEER6, ME6, 1, 2)).version == 6 and parse_any(udp("100.64.0.1", "100.64.0.2", 1, 2)).version == 4
    assert is_multicast6(int(ipaddress.IPv6Address("ff02::1"))) and not is_multicast6(int(ipaddress.IPv6Address(ME6)))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.binary(max_size=40))
def test_parse6_raises_only_bad_packet(tail: bytes, head: bytes):
    for data in (b"\x60" + tail, head + tail, udp6(PEER6, ME6, 1, 2)[:40] + tail):
        try:
            parsed = parse6(data)
        except BadPacket:
            continue
        assert 40 <= parsed.length <= len(data)
