"""The node's LAN party on its own: whatever the TUN or a peer hands it, it answers and counts,
never raises; before registration it leaves everything to the data path."""

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.config import FanoutConfig
from meshvpn.control import messages as m
from meshvpn.lan import igmp
from meshvpn.node.destinations import LocalDestinations
from meshvpn.node.lanparty import LanParty
from meshvpn.node.peers import PeerTable
from meshvpn.sim.packets import igmp_v2, udp

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
