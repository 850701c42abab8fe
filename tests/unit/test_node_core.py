"""Two nodes wired back to back: handshake, data, spoofing, replay, rekey, first packet."""

import random

import pytest

from meshvpn.control import messages as m
from meshvpn.metrics import node_families
from meshvpn.node.events import PeerPathChanged, PeerUp, PingReply
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.probes import PROBE_TARGET_HOSTS
from meshvpn.sim.nodes import NETWORK, alice_and_bob, ip_packet
from meshvpn.wire import Endpoint, MessageType


@pytest.fixture
def pair():
    return alice_and_bob(random.Random)


def test_first_packet_starts_punch_and_punch_request_then_handshake_delivers_it(pair):
    a, b, wire = pair
    packet = ip_packet(a.address, b.address, b"first")
    a.send(packet, 0.0)
    out = a.collect()
    assert [msg.TYPE for msg in a.coord_out] == ["punch_request"]
    assert {data[1] for _, data in out} == {MessageType.PROBE}, "no path yet: probes only, no initiation"
    a.sent = out
    wire.pump(0.0)
    assert b.tun == [packet]
    kinds = [data[1] for _, _, data in wire.log]
    assert kinds.index(MessageType.HANDSHAKE_INIT) > kinds.index(MessageType.PROBE_REPLY)
    assert any(isinstance(e, PeerUp) for e in b.take_events())
    changes = [e for e in a.take_events() if isinstance(e, PeerPathChanged)]
    assert changes[0].new.kind is PathKind.DIRECT and changes[0].new.endpoint == b.endpoint
    peer = a.core.peers.find("bob")
    assert (peer.counters.tx_packets, peer.counters.tx_bytes) == (1, len(packet))
    assert b.core.peers.find("alice").counters.rx_bytes == len(packet)


def test_paths_are_reported_only_to_a_coord_that_takes_them(pair):
    a, b, wire = pair
    registered = m.Registered(node_key=a.public, name=a.name, address=a.address, network=NETWORK, path_reports=True)
    a.from_coord(registered, 0.0)
    assert a.coord_out == [m.Paths((m.PeerPath("bob", None),))], "all peers on registration"
    a.coord_out.clear()
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    assert [msg for msg in a.coord_out if isinstance(msg, m.Paths)] == [m.Paths((m.PeerPath("bob", "direct"),))]
    assert b.core.peers.find("alice").route is not None
    assert not any(isinstance(msg, m.Paths) for msg in b.coord_out), "an older coord would refuse them"


def test_data_flows_both_ways_after_the_handshake(pair):
    a, b, wire = pair
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    for i in range(5):
        a.send(ip_packet(a.address, b.address, b"a%d" % i), 0.1)
        b.send(ip_packet(b.address, a.address, b"b%d" % i), 0.1)
    assert len(a.sent) == len(b.sent) == 5, "both sides seal at once, nothing queued"
    wire.pump(0.1)
    assert [p[20:] for p in b.tun[1:]] == [b"a%d" % i for i in range(5)]
    assert [p[20:] for p in a.tun] == [b"b%d" % i for i in range(5)]


def test_spoofed_inner_source_is_dropped_and_counted(pair):
    a, b, wire = pair
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    a.send(ip_packet("100.64.0.99", b.address, b"spoof"), 0.1)
    wire.pump(0.1)
    alice = b.core.peers.find("alice")
    assert alice.counters.drops["spoofed"] == 1
    assert all(p[20:] != b"spoof" for p in b.tun)


def test_replayed_initiation_is_ignored(pair):
    a, b, wire = pair
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    (initiation,) = [data for _, _, data in wire.log if data[1] == MessageType.HANDSHAKE_INIT]
    alice = b.core.peers.find("alice")
    session = alice.ring.current
    b.receive([(initiation, a.endpoint)], 50.0)
    assert b.core.drops["rejected initiation"] == 1
    assert b.collect() == [], "no response to a replay"
    assert alice.ring.current is session and alice.last_handshake == 0.0


def test_rekey_after_120s_keeps_traffic_flowing(pair):
    a, b, wire = pair
    now = 0.0
    first = None
    while now <= 400.0:
        a.send(ip_packet(a.address, b.address, b"t%d" % int(now)), now)
        b.send(ip_packet(b.address, a.address, b"r%d" % int(now)), now)
        wire.pump(now)
        if first is None:
            first = a.core.peers.find("bob").ring.current
        wire.tick(now)
        now += 5.0
    bob = a.core.peers.find("bob")
    assert bob.ring.current is not first
    assert 120.0 <= bob.last_handshake < 400.0
    assert len(b.tun) == len(a.tun) == 81, "every packet of 400 s delivered across rekeys"
    assert bob.counters.drops == {} and b.core.peers.find("alice").counters.drops == {}


def test_ping_reply_reports_path_and_rtt(pair):
    a, b, wire = pair
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    a.take_events()
    tx = a.node.ping(a.peers.find("bob"), 1.0)
    a.drain(1.0)
    wire.pump(1.25)  # the probe left at 1.0; it and the reply are delivered at 1.25
    (reply,) = [e for e in a.take_events() if isinstance(e, PingReply)]
    assert (reply.tx_id, reply.name, reply.path, reply.endpoint, reply.rtt) == (tx, "bob", "direct", b.endpoint, 0.25)


def test_garbage_datagrams_are_counted_not_raised(pair):
    a, b, wire = pair
    for junk in (b"", b"\x01", b"\x01\x05\x00\x00" + bytes(80), b"\x01\x02\x00\x00" + bytes(88), b"\x09" * 40):
        b.receive([(junk, a.endpoint)], 0.0)
    assert sum(b.core.drops.values()) + sum(b.data.drops.values()) == 5


def test_a_replayed_probe_is_dropped_counted_and_shown_in_status_and_metrics(pair):
    """Issue 13, finding 2: a captured probe played again from elsewhere starts nothing."""
    a, b, wire = pair
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    probe = next(data for src, _, data in wire.log if src == a.endpoint and data[1] == MessageType.PROBE)
    b.receive([(probe, Endpoint("203.0.113.66", 4000))], 1.0)
    assert b.collect() == [], "no reply to the attacker, no probe towards it"
    status = b.core.status(1.0)
    assert status["peers"][0]["drops"] == {"replayed probe": 1}
    families = {family.name: family for family in node_families(b.core, b.data)}
    assert (("alice", "replayed probe"), 1.0) in families["meshvpn_peer_drops"].samples


def test_punches_naming_many_targets_are_held_to_the_probe_budget(pair):
    """Issue 13, finding 4: a member cannot make its peer spray probes at addresses it names."""
    a, b, _ = pair
    sent = []
    for step in range(300):
        now = step / 5
        if step % 20 == 0:
            targets = tuple(m.Endpoint(f"192.0.2.{100 + step // 20 * 8 + n}", 9) for n in range(8))
            a.from_coord(m.Punch(peer_key=b.public, endpoints=targets), now)
        a.tick(now)
        sent += a.collect()
    hosts = {dst.host for dst, data in sent if data[1] == MessageType.PROBE}
    assert len(hosts) == PROBE_TARGET_HOSTS, "15 punches named 120 addresses"
    assert a.core.peers.find("bob").counters.drops["probe budget: targets"] > 0
