"""Two nodes on one link: the path is a LAN path whichever reaches a node first, the peer's probe or its LAN report.

A node learns a peer from the coord in steps: its key first, its LAN endpoints with its report. When
the peer (which already knows our endpoints) punches before its report reaches us, its probe is
answered and probed back as an observed endpoint, and that reply proves a direct path. The report
then names the same endpoint as the peer's own interface address: the path takes the LAN kind
(`meshvpn.node.pathpref.lan_twin`), as it would have with the report first. The bench's
`meshvpn direct` row ran into this: its `a` read `path direct` or `path lan` by that race.

The other way round, the peer may not know us yet when our first probes come, and open only some
of them: an answer from its LAN endpoint proves a LAN path, whichever candidate the probe went to.
"""

import random

import pytest

from meshvpn.control import messages as m
from meshvpn.node.pathfinder import Path, PathKind
from meshvpn.sim.nodes import ALICE_AT, BOB_AT, NETWORK, MemoryNode, Wire, ip_packet, seeded
from meshvpn.wire import Endpoint


def with_lan(node: MemoryNode) -> m.PeerInfo:
    """The node as the coord describes it once its report came: its LAN endpoint too."""
    return node.info(local_endpoints=(m.Endpoint(*node.endpoint),))


def test_the_peers_probe_before_its_lan_report_still_makes_a_lan_path():
    a = seeded(random.Random, 1, "alice", "100.64.0.1", ALICE_AT)
    b = seeded(random.Random, 2, "bob", "100.64.0.2", BOB_AT)
    for node, other in ((a, m.PeerInfo(key=b.public, name=b.name, address=b.address, online=True)), (b, with_lan(a))):
        node.from_coord(m.Registered(node_key=node.public, name=node.name, address=node.address, network=NETWORK), 0.0)
        node.from_coord(m.PeerMap(peers=(other,)), 0.0)
    wire = Wire(a, b)
    b.send(ip_packet(b.address, a.address), 0.0)
    wire.pump(0.0)
    bob = a.peers.by_key[b.public]
    assert bob.paths.current_path.kind is PathKind.DIRECT, "proven on bob's probe, before his report"
    a.from_coord(m.PeerUpdate(with_lan(b)), 0.2)
    assert a.node.get_timer() <= 0.2, "the core takes the change on its timer, at once"
    a.tick(0.2)
    assert bob.paths.current_path.kind is PathKind.LAN and bob.route.endpoint == BOB_AT
    assert [(r.old, r.new, r.reason) for r in bob.path_log.records] == \
        [(None, "direct", "punched"), ("direct", "lan", "better path")]
    a.send(ip_packet(a.address, b.address, b"through"), 0.3)
    wire.pump(0.3)
    assert ip_packet(a.address, b.address, b"through") in b.tun


A_AT, B_AT = Endpoint("198.51.100.1", 41641), Endpoint("198.51.100.2", 41641)
"""One link, no NAT (the bench's link net): each node's STUN mapping is its interface address."""


def run_until(wire: Wire, nodes: tuple[MemoryNode, ...], now: float, until: float) -> None:
    """From `now`, fire the nodes' timers in order until `until`, moving datagrams after each."""
    while (now := max(now, min(t for n in nodes if (t := n.node.get_timer()) is not None))) <= until:
        wire.tick(now)


@pytest.mark.parametrize("told_after", [0, 1, 2])
def test_the_path_is_lan_whichever_of_our_probes_the_peer_could_open(told_after):
    """b registered first, a a moment later. a's peer map names b whole at once (its LAN endpoint
    and its STUN mapping: one endpoint), but b hears of a only when the coord's fan-out window
    closes (up to 0.25 s), and a punches as soon as its first packet for b comes. a's first round
    probes b's LAN candidate, then its public one, the same endpoint; b dropped a probe from a key it
    did not know yet, so that moment could fall between the two: b opened only the public probe, and
    its reply proved the endpoint to a, which is b's own address. That path is `lan` (the endpoint
    is what was proven), not `direct` for good: a's rounds stop at the first path, and a has no
    report of b to come that would relabel it. The bench's `meshvpn direct` row read `direct` so in
    about one start-up of 13. (b now keeps such probes and answers them once it knows a,
    `meshvpn.node.strangers`; whichever it answers first, the rule holds.)"""
    a = seeded(random.Random, 1, "a", "100.64.0.1", A_AT)
    b = seeded(random.Random, 2, "b", "100.64.0.2", B_AT)
    b.from_coord(m.Registered(node_key=b.public, name=b.name, address=b.address, network=NETWORK), 0.0)
    b.from_coord(m.PeerMap(peers=()), 0.0)
    a.from_coord(m.Registered(node_key=a.public, name=a.name, address=a.address, network=NETWORK), 0.1)
    a.from_coord(m.PeerMap(peers=(with_lan(b),)), 0.1)
    a.send(ip_packet(a.address, b.address, b"first"), 0.2)
    first_round = a.collect()
    assert [dst for dst, _ in first_round] == [B_AT, B_AT], "a probes b's LAN and public candidates"
    b.receive([(data, A_AT) for _, data in first_round[:told_after]], 0.201)
    b.from_coord(m.PeerUpdate(with_lan(a)), 0.202)  # the coord's window closes
    b.receive([(data, A_AT) for _, data in first_round[told_after:]], 0.203)
    assert b.node.core.drops["probe from unknown key"] == told_after, "probes from a key b did not know yet"
    wire = Wire(a, b)
    wire.pump(0.204)
    run_until(wire, (a, b), 0.204, 5.0)
    bob, alice = a.peers.by_key[b.public], b.peers.by_key[a.public]
    assert (bob.route.path, alice.route.path) == (Path(PathKind.LAN, B_AT), Path(PathKind.LAN, A_AT))
    assert [r.new for r in bob.path_log.records] == ["lan"], "lan from the first proof, never direct"
    assert ip_packet(a.address, b.address, b"first") in b.tun
