"""Roaming through the real data path: only the newest authenticated data moves a peer (fake clock)."""

import random

import pytest

from meshvpn.node.pathfinder import ChangeReason, PathKind
from meshvpn.node import events as ev
from meshvpn.sim.nodes import ALICE_AT, alice_and_bob, ip_packet
from meshvpn.wire import Endpoint

MOVED = Endpoint("192.0.2.77", 61000)
"""Where alice's NAT puts her after re-mapping her (or where an attacker sends from)."""


def direct_pair():
    alice, bob, wire = alice_and_bob(random.Random)
    alice.send(ip_packet(alice.address, bob.address, b"hi"), 0.0)
    wire.pump(0.0)
    bob.send(ip_packet(bob.address, alice.address, b"back"), 0.1)
    wire.pump(0.1)
    route = bob.peers.by_key[alice.public].route
    assert route.path.kind is PathKind.DIRECT and route.endpoint == ALICE_AT
    bob.take_events()
    return alice, bob


def sealed(alice, bob, count, now):
    """`count` data datagrams from alice to bob, sealed and not delivered."""
    for n in range(count):
        alice.send(ip_packet(alice.address, bob.address, b"%d" % n), now)
    return [data for dst, data in alice.collect() if data[1] == 3]


def test_the_newest_data_from_a_new_source_moves_the_route_and_replies_go_there():
    alice, bob = direct_pair()
    [data] = sealed(alice, bob, 1, 1.0)
    bob.receive([(data, MOVED)], 1.0)
    assert bob.tun[-1].endswith(b"0")
    assert bob.peers.by_key[alice.public].route.endpoint == MOVED
    [change] = [e for e in bob.take_events() if isinstance(e, ev.PeerPathChanged)]
    assert change.reason == ChangeReason.ROAMED.value
    sent = bob.collect()
    assert any(dst == MOVED for dst, data in sent if data[1] == 5), "a probe confirms the new endpoint"
    bob.send(ip_packet(bob.address, alice.address, b"reply"), 1.1)
    assert [dst for dst, data in bob.collect() if data[1] == 3] == [MOVED]


def test_a_replayed_packet_from_a_new_source_moves_nothing():
    alice, bob = direct_pair()
    [data] = sealed(alice, bob, 1, 1.0)
    bob.receive([(data, ALICE_AT)], 1.0)
    bob.receive([(data, MOVED)], 1.1)
    peer = bob.peers.by_key[alice.public]
    assert peer.route.endpoint == ALICE_AT and peer.last_rx_src == ALICE_AT
    assert peer.counters.drops["failed to open"] == 1


def test_an_old_packet_never_seen_from_a_new_source_is_delivered_but_moves_nothing():
    alice, bob = direct_pair()
    older, newer = sealed(alice, bob, 2, 1.0)
    bob.receive([(newer, ALICE_AT)], 1.0)
    bob.receive([(older, MOVED)], 1.1)
    assert bob.tun[-1].endswith(b"0"), "inside the replay window: delivered"
    peer = bob.peers.by_key[alice.public]
    assert peer.route.endpoint == ALICE_AT and peer.last_rx_src == ALICE_AT and peer.last_rx == 1.0
    assert [e for e in bob.take_events() if isinstance(e, ev.PeerPathChanged)] == []


def test_the_core_looks_every_tenth_of_a_second_once_silence_could_act_while_traffic_flowed_recently():
    alice, bob, wire = alice_and_bob(random.Random)
    alice.send(ip_packet(alice.address, bob.address, b"hi"), 0.0)
    wire.pump(0.0)
    wire.tick(1.0)
    assert alice.node.get_timer() == pytest.approx(1.1), "traffic 1 s ago, unanswered: a send may make the path silent"
    for now in range(2, 31):
        wire.tick(float(now))
    assert bob.peers.by_key[alice.public].route.path.kind is PathKind.DIRECT
    assert alice.node.get_timer() > 30.5, "idle for more than WATCH_IDLE: only the path's own timers"
