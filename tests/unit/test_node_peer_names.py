"""The names the node announces are looked at again only when one changed, not at every coord message."""

from dataclasses import replace

from meshvpn.control import messages as m
from test_node_dns import peer_maps, three


def test_the_names_version_moves_on_join_rename_readdress_and_leave_only() -> None:
    alice, bob, carol = three()
    alice.register(bob, now=0.0)
    table = alice.peers
    steps = [
        (m.PeerUpdate(peer=bob.info(public_endpoint=m.Endpoint("203.0.113.9", 4000))), 0),  # endpoint only
        (m.PeerUpdate(peer=replace(bob.info(), online=False)), 0),
        (m.PeerUpdate(peer=carol.info()), 1),  # joins
        (m.PeerUpdate(peer=replace(bob.info(), name="robert")), 1),
        (m.PeerUpdate(peer=replace(carol.info(), address="100.64.0.33")), 1),
        (m.PeerUpdate(peer=replace(carol.info(), address="100.64.0.33")), 0),  # the same again
        (m.PeerRemove(key=carol.public), 1),
        (m.PeerRemove(key=carol.public), 0),  # not there any more
    ]
    for at, (msg, moves) in enumerate(steps, start=1):
        before = table.names_version
        alice.from_coord(msg, float(at))
        assert table.names_version - before == moves, msg


def test_messages_that_change_no_name_announce_nothing_and_a_change_after_them_is_announced() -> None:
    alice, bob, carol = three()
    alice.register(bob, carol, now=0.0)
    (first, second) = peer_maps(alice)
    for at in range(1, 20):
        alice.from_coord(m.PeerUpdate(peer=bob.info(public_endpoint=m.Endpoint("203.0.113.9", 4000 + at))), float(at))
    assert peer_maps(alice) == []
    alice.from_coord(m.PeerUpdate(peer=replace(carol.info(), name="caroline")), 30.0)
    (renamed,) = peer_maps(alice)
    assert renamed.hosts == (("alice", "100.64.0.1"), ("bob", "100.64.0.2"), ("caroline", "100.64.0.3"))
    alice.from_coord(m.Registered(node_key=alice.public, name="alicia", address="100.64.0.1",
                                  network=m.NetworkInfo(name="home", cidr="100.64.0.0/24")), 31.0)
    (own,) = peer_maps(alice)
    assert own.hosts[0] == ("alicia", "100.64.0.1") and own.network == "home"
