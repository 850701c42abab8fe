"""Two nodes on one link: the path is a LAN path whichever reaches a node first, the peer's probe or its LAN report.

A node learns a peer from the coord in steps: its key first, its LAN endpoints with its report. When
the peer (which already knows our endpoints) punches before its report reaches us, its probe is
answered and probed back as an observed endpoint, and that reply proves a direct path. The report
then names the same endpoint as the peer's own interface address: the path takes the LAN kind
(`meshvpn.node.pathpref.lan_twin`), as it would have with the report first. The bench's
`meshvpn direct` row ran into this: its `a` read `path direct` or `path lan` by that race.
"""

import random

from meshvpn.control import messages as m
from meshvpn.node.pathfinder import PathKind
from meshvpn.sim.nodes import ALICE_AT, BOB_AT, NETWORK, MemoryNode, Wire, ip_packet, seeded


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
