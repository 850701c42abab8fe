"""Multicast membership: the querier on the TUN with its RFC 3376 timers, peers' groups, recipients."""

from meshvpn.lan import igmp, packets
from meshvpn.lan.groups import LocalGroups, PeerGroups, recipients
from meshvpn.lan.packets import Cast
from meshvpn.sim.packets import igmp_v2, igmp_v3, ip

SSDP, MDNS = ip("239.255.255.250"), ip("224.0.0.251")


def report(packet: bytes) -> igmp.Report:
    parsed = igmp.parse_report(packet)
    assert parsed is not None
    return parsed


def queried(local: LocalGroups, now: float) -> list[int]:
    """Destinations of the queries due at `now` (224.0.0.1 for a general query)."""
    return [packets.parse(packet).dst for packet in local.packets_to_send(now)]


def test_general_queries_at_start_up_then_every_query_interval() -> None:
    local = LocalGroups(now=100.0)
    assert local.get_timer() == 100.0
    assert queried(local, 100.0) == [packets.ALL_HOSTS]
    assert local.get_timer() == 100.0 + 31.25
    assert queried(local, 131.0) == []
    assert queried(local, 131.25) == [packets.ALL_HOSTS]
    assert local.get_timer() == 131.25 + 125.0
    assert queried(local, 256.25) == [packets.ALL_HOSTS]
    assert local.get_timer() == 381.25


def test_a_report_holds_a_group_for_the_membership_interval() -> None:
    local = LocalGroups(now=0.0)
    local.packets_to_send(0.0)
    local.report(report(igmp_v2("100.64.0.1", igmp.V2_REPORT, "239.255.255.250")), now=10.0)
    assert SSDP in local and local.take_change() == frozenset({SSDP}) and local.take_change() is None
    local.handle_timer(269.9)
    assert SSDP in local
    local.handle_timer(270.0)
    assert SSDP not in local and local.take_change() == frozenset()


def test_a_repeated_report_renews_the_group() -> None:
    local = LocalGroups(now=0.0)
    local.report(report(igmp_v3("100.64.0.1", (igmp.MODE_IS_EXCLUDE, "224.0.0.251", ()))), now=0.0)
    local.report(report(igmp_v3("100.64.0.1", (igmp.MODE_IS_EXCLUDE, "224.0.0.251", ()))), now=200.0)
    local.handle_timer(300.0)
    assert MDNS in local


def test_a_leave_asks_twice_then_drops_the_group_after_the_last_member_query_time() -> None:
    local = LocalGroups(now=0.0)
    local.packets_to_send(0.0)
    local.report(report(igmp_v2("100.64.0.1", igmp.V2_REPORT, "239.255.255.250")), now=1.0)
    local.report(report(igmp_v2("100.64.0.1", igmp.V2_LEAVE, "239.255.255.250")), now=5.0)
    assert local.get_timer() == 5.0
    assert queried(local, 5.0) == [SSDP]
    assert local.get_timer() == 6.0
    assert queried(local, 6.0) == [SSDP]
    local.handle_timer(6.9)
    assert SSDP in local
    local.handle_timer(7.0)
    assert SSDP not in local


def test_a_report_after_the_query_keeps_the_group() -> None:
    local = LocalGroups(now=0.0)
    local.report(report(igmp_v2("100.64.0.1", igmp.V2_REPORT, "239.255.255.250")), now=1.0)
    local.report(report(igmp_v3("100.64.0.1", (igmp.TO_INCLUDE, "239.255.255.250", ()))), now=5.0)
    local.report(report(igmp_v3("100.64.0.1", (igmp.MODE_IS_EXCLUDE, "239.255.255.250", ()))), now=5.5)
    local.handle_timer(7.0)
    assert SSDP in local
    assert queried(local, 6.0) == [packets.ALL_HOSTS, SSDP, SSDP]  # start-up query was due too


def test_leave_of_a_group_never_joined_changes_nothing() -> None:
    local = LocalGroups(now=0.0)
    local.packets_to_send(0.0)
    local.report(report(igmp_v2("100.64.0.1", igmp.V2_LEAVE, "239.255.255.250")), now=1.0)
    assert local.groups == frozenset() and local.get_timer() == 31.25


def test_recipients_follow_peer_groups_and_never_include_the_origin() -> None:
    groups = PeerGroups()
    peers = ["alice", "bob", "carol", "dave"]
    groups.set("bob", {SSDP})
    groups.set("dave", {SSDP, MDNS})
    assert recipients(Cast.MULTICAST, SSDP, peers, groups) == ["bob", "dave"]
    assert recipients(Cast.MULTICAST, SSDP, peers, groups, origin="bob") == ["dave"]
    assert recipients(Cast.MULTICAST, ip("239.9.9.9"), peers, groups) == []
    assert recipients(Cast.MULTICAST, packets.ALL_HOSTS, peers, groups, origin="alice") == ["bob", "carol", "dave"]
    assert recipients(Cast.BROADCAST, ip("100.64.0.255"), peers, groups, origin="carol") == ["alice", "bob", "dave"]
    assert recipients(Cast.LIMITED_BROADCAST, packets.LIMITED_BROADCAST, peers, groups) == peers
    assert recipients(Cast.UNICAST, ip("100.64.0.2"), peers, groups) == []
    groups.set("dave", {MDNS})
    assert groups.members(SSDP) == {"bob"} and groups.of("dave") == {MDNS}
    groups.remove("bob")
    assert recipients(Cast.MULTICAST, SSDP, peers, groups) == [] and groups.of("bob") == frozenset()
