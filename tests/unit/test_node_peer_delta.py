"""A node that takes `peer_delta` ends with the same peers as one given full maps: the real
fan-out coalesces random windows of changes, and real nodes apply them (field-level deltas,
whole-info deltas, one message per change, or the whole map after each window; and a node of
field-level deltas whose map is built again in the middle of windows, as after a reconnect);
also the DNS directory and TURN."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.control import messages as m
from meshvpn.coord.fanout import Fanout, FanoutSettings
from meshvpn.coord.peermap import PeerEntry, peer_update
from meshvpn.node import events as ev
from meshvpn.sim.nodes import NETWORK, MemoryNode, alice_and_bob, ip_packet, seeded

WINDOW = 0.25
PEERS = 6
"""Keys the changes are drawn from (peers of the nodes under test)."""
FRESH = 5
"""The connection of the node whose map is built again during windows."""


def key(n: int) -> bytes:
    return bytes([n + 1]) * 32


def info(n: int, port: int, online: bool, name: int) -> m.PeerInfo:
    return m.PeerInfo(key(n), f"node{n}-{name}", f"100.64.0.{10 + n}", online,
                      (m.Endpoint("192.168.1.20", port),), public_endpoint=m.Endpoint("198.51.100.9", port),
                      home_relay="fra" if port % 2 else None, observed_host="203.0.113.5" if online else None,
                      nat=m.NatInfo(port < 3, "random") if online else None, last_seen=float(name))


change = st.one_of(
    st.tuples(st.just("update"), st.integers(0, PEERS - 1), st.integers(1, 4), st.booleans(), st.integers(0, 2)),
    st.tuples(st.just("remove"), st.integers(0, PEERS - 1)),
    st.tuples(st.just("fresh")),
)
windows = st.lists(st.lists(change, max_size=8), min_size=1, max_size=6)


def registered(node: MemoryNode) -> None:
    node.from_coord(m.Registered(node_key=node.public, name=node.name, address=node.address, network=NETWORK), 0.0)


def view(node: MemoryNode) -> dict[bytes, m.PeerInfo]:
    return {peer.key: peer.info for peer in node.peers}


@settings(max_examples=100, deadline=None)
@given(windows)
def test_deltas_give_the_same_peers_as_full_maps(plan):
    fields, deltas, legacy, full, fresh = (
        seeded(random.Random, seed, name, f"100.64.0.{seed}", ("192.0.2.1", 41641 + seed))
        for seed, name in ((1, "c"), (2, "d"), (3, "l"), (4, "f"), (FRESH, "r")))
    for node in (fields, deltas, legacy, full, fresh):
        registered(node)
        node.from_coord(m.PeerMap(()), 0.0)
    audience = [(1, fields.public, 2), (2, deltas.public, 1), (3, legacy.public, 0), (FRESH, fresh.public, 2)]
    by_conn = {1: fields, 2: deltas, 3: legacy, FRESH: fresh}
    fanout, truth = Fanout(FanoutSettings(window=WINDOW)), {}
    for index, window in enumerate(plan):
        now = 1.0 + index
        for kind, *rest in window:
            if kind == "update":
                n, *fields_of = rest
                truth[key(n)] = info(n, *fields_of)
                message, payload = peer_update(PeerEntry.of(truth[key(n)]))
                fanout.add("home", key(n), message, payload, now)
            elif kind == "remove":
                truth.pop(key(rest[0]), None)
                fanout.add("home", key(rest[0]), m.PeerRemove(key(rest[0])), None, now)
            else:  # the node registers again: its map is the network as it is now
                fanout.fresh(FRESH, "home")
                fresh.from_coord(m.PeerMap(tuple(truth.values())), now)
        for conn, frames in fanout.drain(now + WINDOW, lambda network: audience):
            for frame in frames:
                by_conn[conn].from_coord(m.decode(frame), now + WINDOW)
        full.from_coord(m.PeerMap(tuple(truth.values())), now + WINDOW)
        assert view(full) == truth
        for node in (fields, deltas, legacy, fresh):
            assert view(node) == truth, f"{node.name} after window {index}"
        assert fields.node.peers.unknown_changes == fresh.node.peers.unknown_changes == 0
    names = [[e for e in node.take_events() if isinstance(e, ev.PeerMapChanged)][-1:] for node in (fields, full)]
    if names[0] and names[1]:
        assert names[0][0].hosts[1:] == names[1][0].hosts[1:], "the DNS directory follows deltas too"


def test_a_delta_removes_and_updates_in_one_message_and_ignores_our_own_key():
    node = seeded(random.Random, 1, "d", "100.64.0.1", ("192.0.2.1", 41641))
    registered(node)
    node.from_coord(m.PeerMap((info(0, 1, True, 0), info(1, 1, True, 0))), 0.0)
    me = m.PeerInfo(node.public, "d", "100.64.0.1", True)
    node.from_coord(m.PeerDelta((info(1, 2, False, 0), info(2, 3, True, 0), me), (key(0),)), 1.0)
    assert view(node) == {key(1): info(1, 2, False, 0), key(2): info(2, 3, True, 0)}
    downs = [e for e in node.take_events() if isinstance(e, ev.PeerDown)]
    assert [e.name for e in downs] == ["node0-0"]


def test_a_peer_removed_by_a_delta_is_cut_at_once_even_its_packets_already_on_the_way():
    a, b, wire = alice_and_bob(random.Random)
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    b.send(ip_packet(b.address, a.address), 1.0)
    in_flight = b.collect()
    assert in_flight and a.tun == []  # sealed in the session alice would accept
    a.from_coord(m.PeerDelta(removed=(b.public,)), 1.0)  # bob was revoked
    a.receive([(data, b.endpoint) for _, data in in_flight], 1.0)
    a.send(ip_packet(a.address, b.address), 1.0)
    assert a.tun == [] and a.collect() == [] and a.peers.by_key == {}
