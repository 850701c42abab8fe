"""MLD on the node's TUN: reports and dones read as IGMP's are, what never crosses, and the querier's queries."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.checksum import internet_checksum
from meshvpn.lan import igmp, mld
from meshvpn.lan.groups import LocalGroups
from meshvpn.lan.packets import ALL_NODES6, BadPacket
from meshvpn.lan.packets6 import PROTO_ICMPV6, parse6
from meshvpn.sim.packets import icmp6_echo, mld_v1, mld_v2, udp6

ME6 = "fd7a:115c:a1e0::1"


def g(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


def test_mldv1_reports_and_dones():
    assert mld.parse_report(mld_v1(ME6, mld.V1_REPORT, "ff02::fb")) == igmp.Report(1, joined=frozenset({g("ff02::fb")}))
    assert mld.parse_report(mld_v1(ME6, mld.V1_DONE, "ff05::c")) == igmp.Report(1, left=frozenset({g("ff05::c")}))


def test_mldv2_records_mean_what_igmpv3_records_mean():
    report = mld.parse_report(mld_v2("::", (igmp.TO_EXCLUDE, "ff02::fb", ()), (igmp.ALLOW_NEW, "ff0e::1:3", ("2001:db8::1",)),
                                     (igmp.TO_INCLUDE, "ff02::c", ()), (igmp.BLOCK_OLD, "ff02::1:3", ("2001:db8::1",))))
    assert report == igmp.Report(2, frozenset({g("ff02::fb"), g("ff0e::1:3")}), frozenset({g("ff02::c")}))


def test_groups_that_never_cross_are_not_memberships():
    """All-nodes, interface-local scope and Neighbor Discovery's solicited-node groups stay on the node."""
    records = [(igmp.MODE_IS_EXCLUDE, group, ()) for group in ("ff02::1", "ff01::fb", "ff02::1:ff00:1")]
    assert mld.parse_report(mld_v2("::", *records)) == igmp.Report(2)
    assert mld.parse_report(mld_v1(ME6, mld.V1_REPORT, "ff02::1:ffab:cdef")) == igmp.Report(1)
    assert [mld.reported(g(a)) for a in ("ff02::fb", "ff05::1234", "ff02::1", "ff01::1", "ff02::1:ff00:2")] == \
        [True, True, False, False, False]


def test_queries_and_neighbor_discovery_are_no_reports():
    assert mld.parse_report(mld.query()) is None
    solicitation = bytearray(mld_v1(ME6, mld.V1_REPORT, "ff02::2"))
    solicitation[48] = 133  # a router solicitation (its checksum is not looked at)
    assert mld.parse_report(bytes(solicitation)) is None


def test_bad_reports_raise_bad_mld():
    corrupt = bytearray(mld_v1(ME6, mld.V1_REPORT, "ff02::fb"))
    corrupt[-1] ^= 1
    for packet in (bytes(corrupt), udp6(ME6, "ff02::fb", 1, 2), mld_v1(ME6, mld.V1_REPORT, "fd00::1"),
                   mld_v2("::", (9, "ff02::fb", ())), b"\x60" + bytes(10)):
        with pytest.raises(mld.BadMld):
            mld.parse_report(packet)


def test_a_query_comes_from_a_link_local_address_with_router_alert_and_a_right_checksum():
    """What the kernel checks before it answers (RFC 3810 5.1.14); a namespace test saw it answer."""
    for group, dst, max_resp in ((0, ALL_NODES6, 10000), (g("ff02::fb"), g("ff02::fb"), 1000)):
        packet = mld.query(group)
        header = parse6(packet)
        assert (header.src >> 112, header.dst, header.ttl, header.proto, header.sport) == (0xFE80, dst, 1, PROTO_ICMPV6, 130)
        assert packet[40:48] == bytes([58, 0, 5, 2, 0, 0, 1, 0])
        assert int.from_bytes(packet[52:54], "big") == max_resp
        message = packet[header.upper :]
        assert internet_checksum(message, int.from_bytes(packet[8:40], "big") + len(message) + 58) == 0


def test_the_querier_sends_mld_queries_in_an_ipv6_overlay():
    local = LocalGroups(0.0, mld.query)
    assert local.packets_to_send(0.0) == [mld.query()]
    local.report(mld.parse_report(mld_v2("::", (igmp.TO_EXCLUDE, "ff02::fb", ()))), 1.0)
    local.report(mld.parse_report(mld_v1(ME6, mld.V1_DONE, "ff02::fb")), 2.0)
    assert local.packets_to_send(2.0) == [mld.query(g("ff02::fb"))]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_parse_report_raises_only_bad_mld(tail: bytes, echo_head: bool):
    head = icmp6_echo(ME6, "ff02::1")[:40] if echo_head else mld_v1(ME6, mld.V1_REPORT, "ff02::fb")[:48]
    packet = bytearray(head + tail)
    packet[4:6] = min(len(packet) - 40, 0xFFFF).to_bytes(2, "big")
    try:
        mld.parse_report(bytes(packet))
    except mld.BadMld:
        pass
    except BadPacket as error:  # pragma: no cover - the failure this test is for
        raise AssertionError(f"{type(error).__name__} escaped: {error}")
