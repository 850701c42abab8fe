"""ICMP and ICMPv6 errors: which messages are errors, and the header each one quotes."""

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.lan import icmperrors
from meshvpn.lan.packets import PROTO_TCP, PROTO_UDP, BadPacket
from meshvpn.lan.packets6 import parse_any
from meshvpn.sim.packets import icmp6_echo, icmp6_error, icmp_echo, icmp_error, ip, tcp, tcp6, udp, udp6

ME, PEER = "100.64.0.2", "100.64.0.1"
ME6, PEER6 = "fd7a:115c:a1e0::2", "fd7a:115c:a1e0::1"


def quote_of(error: bytes):
    return icmperrors.quoted(error, parse_any(error))


def test_an_icmp_error_quotes_the_header_and_ports_of_what_this_node_sent():
    """ICMP quotes the IP header and 8 bytes: the ports are there, the total length names more than came."""
    sent = udp(ME, PEER, 40000, 27015, b"x" * 100)
    quote = quote_of(icmp_error(PEER, ME, sent))
    assert (quote.src, quote.dst, quote.proto, quote.sport, quote.dport) == (ip(ME), ip(PEER), PROTO_UDP, 40000, 27015)
    need_frag = quote_of(icmp_error(PEER, ME, tcp(ME, PEER, 50000, 22), kind=3, code=4, data=1400))
    assert (need_frag.proto, need_frag.sport, need_frag.dport) == (PROTO_TCP, 50000, 22)


def test_an_icmpv6_error_quotes_behind_extension_headers():
    sent = tcp6(ME6, PEER6, 50000, 22, extensions=((60, b"opts"),))
    quote = quote_of(icmp6_error(PEER6, ME6, sent + b"x" * 2000))
    assert (quote.src, quote.dst, quote.proto, quote.sport, quote.dport) == \
        (int(ipaddress.IPv6Address(ME6)), int(ipaddress.IPv6Address(PEER6)), PROTO_TCP, 50000, 22)
    assert quote_of(icmp6_error(PEER6, ME6, udp6(ME6, PEER6, 1, 2), kind=1, code=4)).dport == 2


def test_echo_and_other_messages_are_no_errors_and_quote_nothing():
    for packet in (icmp_echo(PEER, ME), icmp6_echo(PEER6, ME6), udp(PEER, ME, 1, 2), icmp_error(PEER, ME, udp(ME, PEER, 1, 2), kind=5)):
        assert not icmperrors.is_error(parse_any(packet)) and quote_of(packet) is None


def test_an_unreadable_quote_is_no_quote():
    assert quote_of(icmp_error(PEER, ME, b"\x45" + bytes(7))) is None  # shorter than an IP header
    assert quote_of(icmp6_error(PEER6, ME6, udp(ME, PEER, 1, 2))) is None  # IPv4 inside ICMPv6
    assert quote_of(icmp_error(PEER, ME, b"\x60" + bytes(40))) is None  # IPv6 inside ICMP


@settings(max_examples=300, deadline=None)
@given(quote=st.binary(max_size=80), kind=st.sampled_from([1, 2, 3, 4, 11, 12]), six=st.booleans())
def test_quoted_raises_nothing_on_garbage(quote: bytes, kind: int, six: bool):
    error = icmp6_error(PEER6, ME6, quote, kind=kind) if six else icmp_error(PEER, ME, quote + bytes(8), kind=kind)
    try:
        header = parse_any(error)
    except BadPacket:
        return
    icmperrors.quoted(error, header)
