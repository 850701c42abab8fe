"""The node's LAN party on its own: whatever the TUN or a peer hands it, it answers and counts,
never raises; before registration it leaves everything to the data path."""

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.config import FanoutConfig
from meshvpn.control import messages as m
from meshvpn.lan import igmp, mld
from meshvpn.node.destinations import LocalDestinations
from meshvpn.node.lanparty import LanParty
from meshvpn.node.peers import PeerTable
from meshvpn.sim.packets import igmp_v2, ipv6, mld_v1, mld_v2, udp, udp6

NETWORK = m.NetworkInfo("party", "100.64.0.0/24")


def registered(rules: m.AccessInfo | None = None) -> LanParty:
    lan = LanParty(FanoutConfig(), LocalDestinations())
    lan.destinations.set_overlay("100.64.0.1", NETWORK.cidr)
    lan.coord_message(m.Registered(bytes(32), "alice", "100.64.0.1", NETWORK, access=rules, lan_party=True),
                      PeerTable(), 0.0)
    return lan


def test_before_registration_nothing_is_taken_from_the_data_path() -> None:
    lan = LanParty(FanoutConfig(), LocalDestinations())
    assert lan.from_tun(udp("100.64.0.1", "100.64.0.255", 1, 2), PeerTable(), 0.0) is None
    assert lan.get_timer() is None


def test_a_join_is_accepted_by_the_data_path_and_told_to_the_coord() -> None:
    lan = registered()
    assert lan.from_tun(igmp_v2("100.64.0.1", igmp.V2_REPORT, "224.0.0.251"), PeerTable(), 1.0) == []
    assert lan.touched
    assert [out.msg for out in lan.outputs()] == [m.Groups(("224.0.0.251",))]
    assert bytes([224, 0, 0, 251]) in lan.destinations.accepted(4)
    lan.from_tun(igmp_v2("100.64.0.1", igmp.V2_LEAVE, "224.0.0.251"), PeerTable(), 2.0)
    lan.handle_timer(2.0 + igmp.LAST_MEMBER_QUERY_TIME)
    assert [out.msg for out in lan.outputs() if hasattr(out, "msg")] == [m.Groups(())]
    assert bytes([224, 0, 0, 251]) not in lan.destinations.accepted(4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.booleans())
def test_garbage_from_the_tun_or_a_peer_is_counted_never_raised(data: bytes, rules: bool) -> None:
    lan = registered(m.AccessInfo("deny") if rules else None)
    lan.from_tun(data, PeerTable(), 1.0)
    lan.inbound(memoryview(data), 1.0)
    lan.track(data, 0, len(data), 1.0)
    assert all(count > 0 for count in lan.status()["dropped"].values())


NETWORK6 = m.NetworkInfo("party6", "fd7a:115c:a1e0::/64")
ME6 = "fd7a:115c:a1e0::1"


def registered6() -> LanParty:
    lan = LanParty(FanoutConfig(), LocalDestinations())
    lan.destinations.set_overlay(ME6, NETWORK6.cidr)
    lan.coord_message(m.Registered(bytes(32), "alice", ME6, NETWORK6, lan_party=True), PeerTable(), 0.0)
    return lan


def test_in_an_ipv6_overlay_an_mld_join_is_accepted_and_told_to_the_coord_as_groups6() -> None:
    lan = registered6()
    assert lan.from_tun(mld_v2("::", (igmp.TO_EXCLUDE, "ff02::fb", ())), PeerTable(), 1.0) == []
    assert [out.msg for out in lan.outputs()] == [m.Groups((), ("ff02::fb",))]
    assert ipaddress.IPv6Address("ff02::fb").packed in lan.destinations.accepted(16)
    assert lan.status()["groups"] == ["ff02::fb"]
    lan.from_tun(mld_v1(ME6, mld.V1_DONE, "ff02::fb"), PeerTable(), 2.0)
    lan.handle_timer(2.0 + igmp.LAST_MEMBER_QUERY_TIME)
    assert [out.msg for out in lan.outputs() if hasattr(out, "msg")] == [m.Groups((), ())]
    assert ipaddress.IPv6Address("ff02::fb").packed not in lan.destinations.accepted(16)


def test_in_an_ipv6_overlay_the_querier_speaks_mld_and_neighbor_discovery_stays_home() -> None:
    lan = registered6()
    lan.handle_timer(0.0)
    assert [out.packets for out in lan.outputs()] == [[mld.query()]]
    solicitation = ipv6("::", "ff02::2", 58, bytes([133, 0, 0, 0, 0, 0, 0, 0]), hops=255)
    assert lan.from_tun(solicitation, PeerTable(), 1.0) == [] and lan.status()["sent"]["copies"] == 0
    assert lan.from_tun(udp6(ME6, "fd7a:115c:a1e0::2", 1, 2), PeerTable(), 1.0) is None
    assert lan.from_tun(udp6("fe80::1", "ff02::fb", 5353, 5353), PeerTable(), 1.0) == []
    assert lan.status()["dropped"] == {"not_originated_here": 1}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_ipv6_garbage_from_the_tun_or_a_peer_is_counted_never_raised(tail: bytes) -> None:
    lan = registered6()
    for head in (b"\x60", mld_v1(ME6, mld.V1_REPORT, "ff02::fb")[:48]):
        data = bytearray(head + tail)
        if len(data) >= 6:
            data[4:6] = max(0, len(data) - 40).to_bytes(2, "big")
        lan.from_tun(bytes(data), PeerTable(), 1.0)
        lan.inbound(memoryview(bytes(data)), 1.0)
