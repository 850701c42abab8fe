"""Classifying inner IPv4 packets: who a packet is for, inbound and outbound, as on one LAN."""

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.lan import packets
from meshvpn.lan.packets import BadPacket, Cast, Drop, Overlay
from meshvpn.sim.packets import icmp_echo, ip, tcp, udp

ME = Overlay.of("100.64.0.1", "100.64.0.0/24")
BOB = ip("100.64.0.2")


def header(packet: bytes) -> packets.Header:
    return packets.parse(packet)


def test_parse_reads_addresses_ports_and_flags() -> None:
    parsed = header(udp("100.64.0.2", "100.64.0.255", 27015, 27016, b"hello", ttl=5))
    assert (parsed.src, parsed.dst, parsed.proto, parsed.ttl) == (BOB, ip("100.64.0.255"), packets.PROTO_UDP, 5)
    assert (parsed.sport, parsed.dport, parsed.first_fragment, parsed.fragmented) == (27015, 27016, True, False)
    assert header(tcp("100.64.0.2", "100.64.0.1", 5000, 22)).tcp_flags == 0x02
    assert (header(icmp_echo("100.64.0.2", "100.64.0.1")).sport, header(icmp_echo("100.64.0.2", "100.64.0.1", True)).sport) == (8, 0)


def test_later_fragments_carry_no_ports() -> None:
    later = header(udp("100.64.0.2", "100.64.0.1", 1, 2, b"x" * 16, frag=0x0003, ident=7))
    assert (later.first_fragment, later.fragmented, later.sport, later.ident) == (False, True, None, 7)
    first = header(udp("100.64.0.2", "100.64.0.1", 1, 2, frag=0x2000, ident=7))
    assert (first.first_fragment, first.fragmented, first.dport) == (True, True, 2)


def test_classify_every_destination() -> None:
    cases = {
        "100.64.0.1": Cast.SELF,
        "100.64.0.255": Cast.BROADCAST,
        "255.255.255.255": Cast.LIMITED_BROADCAST,
        "224.0.0.251": Cast.MULTICAST,
        "239.255.255.250": Cast.MULTICAST,
        "100.64.0.7": Cast.UNICAST,
        "192.168.1.10": Cast.UNICAST,
    }
    for dst, cast in cases.items():
        assert packets.classify(header(udp("100.64.0.2", dst, 1, 2)), ME) is cast, dst


def test_inbound_delivers_only_what_is_for_this_node() -> None:
    joined = {ip("239.255.255.250")}

    def verdict(dst: str, src: str = "100.64.0.2", ttl: int = 64) -> Cast | Drop:
        return packets.inbound(header(udp(src, dst, 1, 2, ttl=ttl)), ME, joined, BOB)

    assert verdict("100.64.0.1") is Cast.SELF
    assert verdict("100.64.0.255") is Cast.BROADCAST
    assert verdict("255.255.255.255") is Cast.LIMITED_BROADCAST
    assert verdict("239.255.255.250", ttl=1) is Cast.MULTICAST
    assert verdict("224.0.0.1") is Cast.MULTICAST
    assert verdict("224.0.0.251") is Drop.NOT_JOINED
    assert verdict("192.168.1.10") is Drop.NOT_FOR_ME
    assert verdict("172.17.0.1") is Drop.NOT_FOR_ME
    assert verdict("100.64.0.1", src="100.64.0.3") is Drop.SPOOFED
    assert verdict("100.64.0.255", ttl=0) is Drop.TTL


def test_outbound_fans_out_only_what_this_node_originates() -> None:
    def verdict(dst: str, src: str = "100.64.0.1", ttl: int = 64) -> Cast | Drop:
        return packets.outbound(header(udp(src, dst, 1, 2, ttl=ttl)), ME)

    assert verdict("100.64.0.2") is Cast.UNICAST
    assert verdict("100.64.0.255") is Cast.BROADCAST
    assert verdict("255.255.255.255") is Cast.LIMITED_BROADCAST
    assert verdict("224.0.2.60", ttl=1) is Cast.MULTICAST
    assert verdict("224.0.2.60", src="100.64.0.2") is Drop.NOT_OURS
    assert verdict("224.0.2.60", ttl=0) is Drop.TTL


def test_truncated_and_foreign_packets_are_refused() -> None:
    good = udp("100.64.0.2", "100.64.0.1", 1, 2, b"payload")
    for bad in (b"", good[:19], b"\x60" + good[1:], b"\x44" + good[1:], good[:2] + b"\xff\xff" + good[4:]):
        try:
            packets.parse(bad)
        except BadPacket:
            continue
        raise AssertionError(f"parsed {bad!r}")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_parse_raises_only_bad_packet(data: bytes) -> None:
    try:
        parsed = packets.parse(data)
    except BadPacket:
        return
    assert parsed.length <= len(data)
    packets.classify(parsed, ME)
