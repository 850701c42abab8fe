"""What the node does on which change of its own network: the rules of `meshvpn.node.netchange` on a fake clock,
and the node's answer (`Node.network_changed`)."""

import random

from meshvpn.control import messages as m
from meshvpn.node.netchange import NetChangeConfig, NetChanges, NetworkChanged
from meshvpn.node.netlink import IFA_F_DEPRECATED, IFA_F_TENTATIVE, AddressChange, LinkChange, RouteChange
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.events import CloseRelayStream, OpenRelayStream
from meshvpn.sim.nodes import ALICE_AT, BOB_AT, NETWORK, WALL_OFFSET, alice_and_bob, ip_packet, seeded

CONFIG = NetChangeConfig(debounce=0.15, settle_max=0.6)
ETH0, TUN = 2, 5


def watching(coord_local: str | None = "10.1.0.11") -> NetChanges:
    changes = NetChanges(["mesh0"], CONFIG)
    changes.seed({1: "lo", ETH0: "eth0", TUN: "mesh0"}, [("lo", "127.0.0.1"), ("eth0", "10.1.0.11")], "10.1.0.1")
    changes.coord_local = coord_local
    return changes


def run_until(changes: NetChanges, now: float) -> list[NetworkChanged]:
    deadline = changes.get_timer()
    if deadline is not None and deadline <= now:
        changes.handle_timer(deadline)
    return changes.next_actions()


def move(changes: NetChanges, at: float) -> None:
    """Moving to another site's LAN, as `ip` does it: old address and route gone, new ones added."""
    changes.observe(AddressChange(ETH0, "10.1.0.11", 24, "eth0", removed=True), at)
    changes.observe(RouteChange(0, "10.1.0.1", ETH0, removed=True), at)
    changes.observe(AddressChange(ETH0, "10.2.0.11", 24, "eth0"), at + 0.01)
    changes.observe(RouteChange(0, "10.2.0.1", ETH0), at + 0.02)


def test_a_move_is_one_action_after_the_debounce_and_reconnects_the_coord():
    changes = watching()
    move(changes, 10.0)
    assert changes.get_timer() == 10.02 + 0.15
    assert run_until(changes, 10.16) == []
    [action] = run_until(changes, 10.17)
    assert action.vanished == {"10.1.0.11"}
    assert action.connections_lost and action.reconnect_coord and action.first_at == 10.0 and not action.resumed
    assert action.reasons == ("10.1.0.11 removed from eth0", "default route via 10.1.0.1 removed",
                              "10.2.0.11 added on eth0", "default route via 10.2.0.1")
    assert changes.get_timer() is None


def test_a_link_down_and_up_keeps_the_coord_connection():
    changes = watching()
    changes.observe(LinkChange(ETH0, "eth0", up=False), 5.0)
    changes.observe(RouteChange(0, "10.1.0.1", ETH0, removed=True), 5.0)
    [down] = run_until(changes, 5.15)
    assert down.reasons == ("eth0 down", "default route via 10.1.0.1 removed") and not down.reconnect_coord
    assert not down.resumed, "nothing to check while the network is gone"
    changes.observe(LinkChange(ETH0, "eth0", up=True), 10.0)
    changes.observe(RouteChange(0, "10.1.0.1", ETH0), 10.0)
    [up] = run_until(changes, 10.15)
    assert up.reasons == ("eth0 up", "default route via 10.1.0.1") and not up.reconnect_coord
    assert up.vanished == frozenset() and not up.connections_lost
    assert up.resumed, "the connection survived: the coord link checks it carries again"


def test_a_link_back_with_the_coord_link_dialling_reconnects_rather_than_checks():
    changes = watching(coord_local=None)
    changes.observe(LinkChange(ETH0, "eth0", up=False), 5.0)
    changes.observe(LinkChange(ETH0, "eth0", up=True), 5.1)
    [up] = run_until(changes, 5.3)
    assert up.reconnect_coord and not up.resumed
    assert up.back and not up.connections_lost, "the TCP paths and relay streams stood through it: they check"


def test_a_default_route_back_alone_has_the_coord_link_check_its_connection():
    changes = watching()
    changes.observe(RouteChange(0, "10.1.0.1", ETH0), 3.0)
    [action] = run_until(changes, 3.2)
    assert action.resumed and not action.reconnect_coord


def test_a_new_default_gateway_reconnects_the_coord_even_with_the_same_address():
    changes = watching()
    changes.observe(RouteChange(0, "10.1.0.254", ETH0), 1.0)
    [action] = run_until(changes, 2.0)
    assert action.reconnect_coord and action.connections_lost
    assert not action.back, "the connections of the old gateway are dead: nothing to check"


def test_an_address_gone_and_back_within_the_burst_has_not_vanished():
    changes = watching()
    changes.observe(AddressChange(ETH0, "10.1.0.11", 24, "eth0", removed=True), 1.0)
    changes.observe(AddressChange(ETH0, "10.1.0.11", 24, "eth0"), 1.05)
    [action] = run_until(changes, 2.0)
    assert action.vanished == frozenset() and not action.reconnect_coord


def test_the_tun_loopback_and_link_local_never_matter():
    changes = watching()
    changes.observe(AddressChange(TUN, "100.80.0.2", 24, "mesh0"), 1.0)
    changes.observe(LinkChange(TUN, "mesh0", up=True), 1.0)
    changes.observe(RouteChange(0, None, TUN), 1.0)
    changes.observe(AddressChange(1, "127.0.0.2", 8, "lo"), 1.0)
    changes.observe(AddressChange(ETH0, "169.254.3.4", 16, "eth0"), 1.0)
    changes.observe(RouteChange(24, None, ETH0), 1.0)
    assert changes.get_timer() is None and run_until(changes, 5.0) == []


def test_a_tun_created_after_watching_began_is_known_by_its_name():
    changes = watching()
    changes.observe(LinkChange(9, "mesh0", up=True), 1.0)
    changes.observe(AddressChange(9, "100.80.0.2", 24, None), 1.0)
    assert changes.get_timer() is None


def test_link_flags_that_leave_it_as_it_was_do_not_matter():
    changes = watching()
    changes.observe(LinkChange(ETH0, "eth0", up=True), 1.0)  # first report of a known, up link
    changes.observe(LinkChange(ETH0, "eth0", up=True), 2.0)  # promiscuous mode, MTU...
    assert changes.get_timer() is None
    changes.observe(LinkChange(7, "wlan0", up=True), 3.0)  # a new link appears
    assert [a.reasons for a in run_until(changes, 4.0)] == [("wlan0 up",)]


def test_changes_that_go_on_are_acted_on_after_settle_max():
    changes = watching()
    for step in range(6):  # a change every 0.1 s, each within the debounce of the one before
        changes.observe(AddressChange(ETH0, f"10.1.0.{100 + step}", 24, "eth0"), 1.0 + step / 10)
        assert run_until(changes, 1.0 + step / 10) == []
    assert changes.get_timer() == 1.6
    [action] = run_until(changes, 1.6)
    assert len(action.reasons) == 6 and action.first_at == 1.0


def test_an_overrun_counts_as_a_change():
    changes = watching(coord_local=None)
    changes.overrun(3.0)
    [action] = run_until(changes, 3.2)
    assert action.reasons == ("netlink overrun",) and action.reconnect_coord  # no connection: try now
    assert not action.connections_lost


def test_the_node_reprobes_every_peer_in_use_and_asks_the_coord_to_punch():
    a, b, wire = alice_and_bob(random.Random)
    carol = seeded(random.Random, 3, "carol", "100.64.0.3", ("203.0.113.3", 41641))
    a.from_coord(m.PeerUpdate(peer=carol.info()), 0.0)
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    assert a.peers.by_key[b.public].route.path.kind is PathKind.DIRECT
    a.coord_out.clear()
    a.collect()
    a.node.network_changed(1.0)
    a.drain(1.0)
    assert a.coord_out == [m.PunchRequest(peer_key=b.public)]  # carol was never in use
    assert {dst for dst, _ in a.collect()} == {BOB_AT}


def test_relay_streams_from_a_lost_address_are_closed_and_reopened():
    a = seeded(random.Random, 1, "alice", "100.64.0.1", ALICE_AT)
    relay = m.RelayInfo(name="r1", host="203.0.113.20", port=7500, public_key=bytes(range(32)))
    token = m.RelayToken(relay="r1", token=bytes(100), expires=WALL_OFFSET + 3600)
    a.from_coord(m.Registered(node_key=a.public, name=a.name, address=a.address, network=NETWORK, relays=(relay,),
                              relay_tokens=(token,)), 0.0)
    now = 0.0
    while not any(isinstance(o, OpenRelayStream) for o in a.other_out):  # UDP hellos unanswered: TCP
        now += 0.25
        assert now < 5.0
        a.tick(now)
    a.node.relay_stream_up("r1", now)
    a.drain(now)
    a.other_out.clear()

    a.node.servers_network_changed(now)
    a.drain(now)
    assert not any(isinstance(o, CloseRelayStream) for o in a.other_out), "a link flap keeps the stream"
    a.other_out.clear()
    a.node.servers_network_changed(now, connections_lost=True)
    a.drain(now)
    assert [type(o) for o in a.other_out] == [CloseRelayStream]
    while not any(isinstance(o, OpenRelayStream) for o in a.other_out):
        now += 0.1
        assert now < 10.0
        a.tick(now)


def test_a_new_ipv6_address_and_a_removed_one_are_network_changes():
    changes = watching()
    changes.seed({}, [], "10.1.0.1", [("eth0", "2001:db8:1:1::b", 0)])
    changes.observe(AddressChange(ETH0, "2001:db8:1:1::99", 64, None), 1.0)
    changes.observe(AddressChange(ETH0, "2001:db8:1:1::b", 64, None, removed=True), 1.05)
    [action] = run_until(changes, 2.0)
    assert action.reasons == ("2001:db8:1:1::99 added on eth0", "2001:db8:1:1::b removed from eth0")
    assert action.vanished == {"2001:db8:1:1::b"} and not action.reconnect_coord, "the coord came over IPv4"


def test_the_coord_reconnects_when_its_ipv6_source_address_goes():
    changes = watching(coord_local="2001:db8:1:1::b")
    changes.seed({}, [], "10.1.0.1", [("eth0", "2001:db8:1:1::b", 0)])
    changes.observe(AddressChange(ETH0, "2001:db8:1:1::b", 64, None, removed=True), 1.0)
    [action] = run_until(changes, 2.0)
    assert action.reconnect_coord and action.connections_lost
    assert not action.back, "the connections of the old gateway are dead: nothing to check"


def test_an_ipv6_address_matters_once_usable_and_not_when_its_lifetime_is_renewed():
    changes = watching()
    changes.seed({}, [], "10.1.0.1", [("eth0", "2001:db8:1:1::b", 0)])
    changes.observe(AddressChange(ETH0, "2001:db8:1:1::b", 64, None), 1.0)  # a router advertisement's renewal
    changes.observe(AddressChange(ETH0, "2001:db8:1:1::99", 64, None, flags=IFA_F_TENTATIVE), 1.0)
    assert changes.get_timer() is None, "known, or not usable yet: nothing to announce"
    changes.observe(AddressChange(ETH0, "2001:db8:1:1::99", 64, None), 2.0)  # duplicate address detection done
    changes.observe(AddressChange(ETH0, "2001:db8:1:1::b", 64, None, flags=IFA_F_DEPRECATED), 2.0)
    [action] = run_until(changes, 3.0)
    assert action.reasons == ("2001:db8:1:1::99 added on eth0", "2001:db8:1:1::b unusable on eth0")


def test_link_local_and_multicast_ipv6_addresses_never_matter():
    changes = watching()
    changes.observe(AddressChange(ETH0, "fe80::1", 64, None), 1.0)
    changes.observe(AddressChange(ETH0, "ff02::1", 128, None), 1.0)
    changes.observe(AddressChange(ETH0, "::1", 128, None), 1.0)
    assert changes.get_timer() is None
