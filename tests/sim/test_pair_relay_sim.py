"""A relayed pair takes the relay with the lowest round trip for the pair, not either end's nearest.

`a` and `b` sit behind random-port NATs (only a relay joins them), each in its own region 20 ms
from the internet. Region east holds relay `east` next to `a`, region west relay `west` next to
`b` (each region's router forwards the relay's port), and relay `mid` sits on the internet. Each
end's nearest relay, and so its home, is its own region's; but through `east` or `west` the pair's
round trip crosses both regions twice, through `mid` once each. Every node is the real `Node`, the
relays the real `RelayCore`, and the fake coord passes on each node's `relay_home` report as the
real one does; both ends must end on `mid`.
"""

import random
from dataclasses import replace

from meshvpn.control import messages as m
from meshvpn.node.ctl import format_status
from meshvpn.node.pathfinder import PathKind
from meshvpn.relaytoken import TokenMinter
from meshvpn.sim import FULL_CONE, SYMMETRIC_RANDOM, Host, Nat, Network, Scheduler
from meshvpn.sim.network import Link, LinkDirection
from meshvpn.sim.relays import COORD, PORT, SimRelay
from meshvpn.wire import Endpoint
from test_node_sim import SimNode
from test_relay_cookie_sim import RelayingCoord

REGION = 0.020
"""One-way delay between a region and the internet."""
REGIONAL_RELAY = 0.008
"""One-way delay of a regional relay's own link: its nearest node still has it nearest."""


class ReportingCoord(RelayingCoord):
    """The fake coord with relays, which also shows each node's `relay_home` report to the others."""

    def receive(self, node, msg):
        if isinstance(msg, m.RelayHome):
            info = replace(node.info(), home_relay=msg.relay, relay_rtts=msg.rtts)
            for other in self.nodes:
                if other is not node:
                    self._send(other, m.PeerUpdate(info))
            return
        super().receive(node, msg)


def region(net, rng, public, lan_prefix, name, node_seed, node_name, address):
    """A region behind its router at `public`: a node behind a random-port NAT, and a relay whose
    port the router forwards."""
    router = Nat(net, public, replace(FULL_CONE, hairpinning=True),
                 link=Link(LinkDirection(REGION), LinkDirection(REGION)))
    relay = SimRelay(net.scheduler, net, name, f"{lan_prefix}.5", REGIONAL_RELAY, rng, realm=router.lan, public=public)
    router.forward(PORT, Endpoint(f"{lan_prefix}.5", PORT))
    nat = Nat(net, f"{lan_prefix}.2", SYMMETRIC_RANDOM, realm=router.lan)
    node = SimNode(net, node_seed, node_name, address, Host(net, f"10.{node_seed % 200}.0.11", realm=nat.lan), nat)
    return node, relay


def relayed_pair(seed):
    rng = random.Random(seed)
    net = Network(Scheduler(), rng)
    a, east = region(net, rng, "203.0.113.100", "10.100.0", "east", 11, "node0", "100.64.0.1")
    b, west = region(net, rng, "198.51.100.100", "10.101.0", "west", 12, "node1", "100.64.0.2")
    mid = SimRelay(net.scheduler, net, "mid", "192.0.2.20", 0.001, rng)
    ReportingCoord(net, [a, b], (east, mid, west), TokenMinter(COORD, rng.randbytes))
    return net, a, b, (east, mid, west)


def relay_of(node, other):
    route = node.mem.peers.by_key[other.public].route
    assert route is not None and route.path.kind is PathKind.RELAY, route
    return route.endpoint


def flowing(seed, packets, seconds):
    """`relayed_pair` after a second, then `packets` from a to b every 0.25 s, run for `seconds`."""
    net, a, b, relays = relayed_pair(seed)
    net.scheduler.run_for(1.0)
    for n in range(packets):
        net.scheduler.call_later(0.25 * n, a.send_ip, b, b"over the pair's relay %d" % n)
    net.scheduler.run_for(seconds)
    return net, a, b, relays


def test_both_ends_take_the_relay_with_the_lowest_sum_not_their_nearest():
    net, a, b, (east, mid, west) = flowing(1, 40, 10.0)
    assert a.mem.node.relays.home.name == "east" and b.mem.node.relays.home.name == "west", "each end's nearest"
    assert relay_of(a, b) == relay_of(b, a) == mid.endpoint
    a_rtts, b_rtts = a.mem.node.rtt_report.reported, b.mem.node.rtt_report.reported
    sums = {name: a_rtts[name] + b_rtts[name] for name in ("east", "mid", "west")}
    assert min(sums, key=sums.get) == "mid" and sums["mid"] < 0.9 * sums["east"], sums
    delivered_before = len(b.tun)
    b.send_ip(a, b"and back")
    a.send_ip(b, b"once more")
    net.scheduler.run_for(0.5)
    assert len(b.tun) == delivered_before + 1 and a.tun[-1].endswith(b"and back")


def test_status_shows_the_peers_report_the_pairs_relay_and_why():
    net, a, b, _ = flowing(2, 8, 3.0)
    status = a.mem.node.status(net.scheduler.now)
    to_b = next(entry for entry in status["peers"] if entry["name"] == "node1")
    b_rtts = b.mem.node.rtt_report.reported
    assert to_b["relay_rtts"] == b_rtts and set(b_rtts) == {"east", "mid", "west"}, to_b
    assert (to_b["path"], to_b["relay"], to_b["relay_reason"]) == ("relay", "mid", "lowest sum")
    a_rtts = a.mem.node.rtt_report.reported
    assert to_b["relay_sums"] == {name: {"ours": a_rtts[name], "theirs": b_rtts[name], "sum": a_rtts[name] + b_rtts[name]}
                                  for name in ("east", "mid", "west")}
    text = format_status(status | {"self": {"name": "node0", "overlay": None}})
    assert " via mid: lowest sum" in text and f"*mid {a_rtts['mid']}+{b_rtts['mid']}=" in text, text
