"""The rtnetlink decoder: link, IPv4 and IPv6 address and IPv4 route changes as the kernel sends them."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshvpn.errors import RemoteProtocolError
from meshvpn.node import netlink
from meshvpn.node.netlink import AddressChange, LinkChange, RouteChange, decode


def test_one_read_holds_several_messages_in_order():
    data = (netlink.link_message(2, "eth0", False) + netlink.address_message(2, "10.1.0.11", 24, "eth0", removed=True)
            + netlink.route_message(0, "10.1.0.1", 2, removed=True))
    assert decode(data) == [
        LinkChange(2, "eth0", up=False),
        AddressChange(2, "10.1.0.11", 24, "eth0", removed=True),
        RouteChange(0, "10.1.0.1", 2, removed=True),
    ]


def test_a_link_is_up_only_with_carrier_too():
    body = struct.pack("=BxHiII", 0, 1, 3, netlink.IFF_UP, 0) + netlink.attribute(netlink.IFLA_IFNAME, b"eth1\0")
    assert decode(netlink.message(netlink.RTM_NEWLINK, body)) == [LinkChange(3, "eth1", up=False)]
    assert decode(netlink.link_message(3, "eth1", True)) == [LinkChange(3, "eth1", up=True)]
    assert decode(netlink.link_message(3, "eth1", True, removed=True)) == [LinkChange(3, "eth1", False, True)]


def test_routes_of_other_tables_and_families_are_skipped():
    local_table = netlink.route_message(32, None, 2, table=255)
    ipv6 = netlink.message(netlink.RTM_NEWROUTE, struct.pack("=BBBBBBBBI", 10, 0, 0, 0, 254, 3, 0, 1, 0))
    assert decode(local_table + ipv6) == []
    default = decode(netlink.route_message(0, None, 7))[0]
    assert default.default and default.gateway is None and default.oif == 7
    assert not decode(netlink.route_message(24, None, 7))[0].default


def test_other_message_types_are_skipped():
    done = netlink.message(netlink.NLMSG_DONE, bytes(4))
    assert decode(done + netlink.link_message(1, "lo", True)) == [LinkChange(1, "lo", True)]


def test_an_overrun_says_notifications_were_lost():
    with pytest.raises(netlink.Overrun):
        decode(netlink.message(netlink.NLMSG_OVERRUN, b""))


@pytest.mark.parametrize("data", [
    struct.pack("=IHHII", 8, netlink.RTM_NEWLINK, 0, 0, 0),  # shorter than its own header
    struct.pack("=IHHII", 64, netlink.RTM_NEWLINK, 0, 0, 0),  # longer than the read
    netlink.message(netlink.RTM_NEWLINK, bytes(8)),  # body shorter than ifinfomsg
    netlink.message(netlink.RTM_NEWADDR, struct.pack("=BBBBI", 2, 24, 0, 0, 2)),  # no address
    netlink.message(netlink.RTM_NEWADDR, struct.pack("=BBBBI", 2, 24, 0, 0, 2) + struct.pack("=HH", 40, 1)),
    netlink.message(netlink.RTM_NEWADDR, struct.pack("=BBBBI", 10, 64, 0, 0, 2)
                    + netlink.attribute(netlink.IFA_ADDRESS, bytes(4))),  # an IPv6 message with 4 bytes
    netlink.address6_message(2, "2001:db8::1", 64)[:-4] + bytes(0),  # cut short of its length
])
def test_malformed_reads_raise_the_remote_error(data):
    with pytest.raises(RemoteProtocolError):
        decode(data)


@given(st.lists(st.tuples(st.integers(1, 2**31 - 1), st.ip_addresses(v=4).map(str), st.integers(0, 32),
                          st.booleans()), max_size=5))
def test_address_messages_round_trip(entries):
    data = b"".join(netlink.address_message(index, address, prefix, f"if{index}", removed)
                    for index, address, prefix, removed in entries)
    assert decode(data) == [AddressChange(index, address, prefix, f"if{index}", removed)
                            for index, address, prefix, removed in entries]


@given(st.lists(st.tuples(st.integers(1, 2**31 - 1), st.ip_addresses(v=6).map(lambda a: a.compressed),
                          st.integers(0, 128), st.integers(0, 2**32 - 1), st.booleans()), max_size=5))
def test_ipv6_address_messages_round_trip_with_their_extended_flags(entries):
    data = b"".join(netlink.address6_message(index, address, prefix, flags, removed)
                    for index, address, prefix, flags, removed in entries)
    assert decode(data) == [AddressChange(index, address, prefix, None, removed, flags)
                            for index, address, prefix, flags, removed in entries]


def test_without_ifa_flags_an_ipv6_address_has_the_headers_flags():
    body = (struct.pack("=BBBBI", 10, 64, netlink.IFA_F_TENTATIVE, 0, 4)
            + netlink.attribute(netlink.IFA_ADDRESS, bytes.fromhex("20010db8000000010000000000000099")))
    assert decode(netlink.message(netlink.RTM_NEWADDR, body)) == [
        AddressChange(4, "2001:db8:0:1::99", 64, None, flags=netlink.IFA_F_TENTATIVE)]


@given(st.binary(max_size=200))
def test_any_read_decodes_or_raises_the_remote_error_only(data):
    try:
        decode(data)
    except RemoteProtocolError:
        pass
