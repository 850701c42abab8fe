"""Dual-stack pairs race IPv6 against IPv4 on the simulator (`meshvpn.sim.dualstack`), with the
fake clock: a broken IPv6 route costs nothing, an open one beats the relay, IPv6 wins when it is
as fast as IPv4 and loses when it is clearly slower, and an IPv6 path that dies mid-flow fails
over within a second.

The nodes are `test_pathfinder_sim`'s harness (a PathFinder over a simulated socket) on
dual-stack hosts: IPv4 behind a simulated NAT, IPv6 behind a stateful firewall that lets in
only replies, as home routers do (a port-preserving, port-restricted `Nat` at the IPv6 address
the node announces). The coord's part hands each node the other's IPv6 endpoint as a candidate
of kind `ipv6` beside its IPv4 ones; both families' filters open on the same punch, so they race.
"""

import random

import pytest

from meshvpn.node.candidates import Candidate, CandidateKind
from meshvpn.node.pathfinder import RELAY_PATH, ChangeReason, Path, PathKind
from meshvpn.sim import PORT_RESTRICTED_CONE, SYMMETRIC_RANDOM, Host, Link, LinkDirection, Nat, Network, Scheduler
from meshvpn.sim.dualstack import DualStackHost
from test_pathfinder_sim import PORT, STUN, T0, Node, Pair

V4_HOP = 0.01
"""One-way delay of each NAT's uplink; with the hosts' own links (5 ms) an IPv4 round trip is 60 ms."""
TRAFFIC_INTERVAL = 0.05


class DualNode(Node):
    """A node that also learns its peer's IPv6 endpoint (`address6`) as a candidate of kind `ipv6`."""

    def __init__(self, scheduler, host, seed, address6):
        super().__init__(scheduler, host, seed)
        self.address6 = address6
        """Where its IPv6 socket is reached: the firewall's address, its port (the firewall keeps it)."""

    def learn(self, peer, now):
        super().learn(peer, now)
        self.finder.set_candidates(self.finder.candidates + [Candidate(peer.address6, CandidateKind.IPV6)], now)


class DualPair(Pair):
    """Nodes a and b on dual-stack hosts: IPv4 behind `behavior` NATs, IPv6 behind firewalls with
    `v6_delay` one way on each firewall's uplink (10 ms makes the IPv6 round trip equal the IPv4 one)."""

    def __init__(self, behavior, v6_delay=V4_HOP, v6_broken=False, seed=1):
        self.scheduler = Scheduler()
        self.net = Network(self.scheduler, random.Random(seed))
        stun = Host(self.net, STUN[0]).bind(STUN[1], None)
        stun.on_receive = lambda data, src: stun.sendto(b"s%s:%d" % (src[0].encode(), src[1]), src)
        self.links6 = []
        nodes = []
        for index, (wan, lan, v6) in enumerate((("203.0.113.10", "192.168.1.10", "2001:db8:1::10"),
                                                ("203.0.113.20", "192.168.2.10", "2001:db8:2::10"))):
            nat = Nat(self.net, wan, behavior, link=Link(LinkDirection(V4_HOP), LinkDirection(V4_HOP)))
            link6 = Link(LinkDirection(v6_delay), LinkDirection(v6_delay), connected=not v6_broken)
            firewall = Nat(self.net, v6, PORT_RESTRICTED_CONE, link=link6)
            self.links6.append(link6)
            host = DualStackHost(Host(self.net, lan, nat.lan), Host(self.net, f"fd00:{index}::10", firewall.lan))
            nodes.append(DualNode(self.scheduler, host, seed + 100 * index, (v6, PORT)))
        self.a, self.b = nodes
        self.relayed = 0
        self.coordinate()

    def flow(self, until):
        """Traffic both ways every TRAFFIC_INTERVAL until `until`: straight on a direct path, else
        through the relay (which always delivers)."""
        for node, peer in ((self.a, self.b), (self.b, self.a)):
            now, path = self.scheduler.now, node.finder.current_path
            if path is not None and path.kind is PathKind.DIRECT:
                node.sock.sendto(b"D", path.endpoint)
            elif path == RELAY_PATH:
                peer.finder.relay_traffic_received(now)
                self.relayed += 1
            node.finder.traffic_sent(now)
            node._pump()
        if self.scheduler.now + TRAFFIC_INTERVAL < until:
            self.scheduler.call_later(TRAFFIC_INTERVAL, self.flow, until)


def test_a_broken_ipv6_route_costs_nothing_when_ipv4_punches():
    pair, ipv4_only = DualPair(PORT_RESTRICTED_CONE, v6_broken=True), Pair(PORT_RESTRICTED_CONE, PORT_RESTRICTED_CONE)
    for run in (pair, ipv4_only):
        run.scheduler.run_until(T0 + 5.0)
    ((when, change),) = pair.a.changes
    assert change.new == Path(PathKind.DIRECT, pair.b.public)
    assert when == ipv4_only.a.changes[0][0] < T0 + 0.3  # the second round, as without IPv6


def test_a_broken_ipv6_route_costs_nothing_when_ipv4_relays():
    pair = DualPair(SYMMETRIC_RANDOM, v6_broken=True)
    pair.scheduler.run_until(T0 + 5.0)
    assert [(when, change.new) for when, change in pair.a.changes] == [(pytest.approx(T0 + 2.0), RELAY_PATH)]


def test_an_open_ipv6_path_beats_the_relay_in_the_first_round():
    pair = DualPair(SYMMETRIC_RANDOM)
    pair.scheduler.run_until(T0 + 5.0)
    ((when, change),) = pair.a.changes
    assert change.new == Path(PathKind.DIRECT, pair.b.address6) and when < T0 + 0.3


@pytest.mark.parametrize("v6_delay, wins", [(0.005, "ipv6"), (0.0102, "ipv6"), (0.015, "ipv4")])
def test_ipv6_wins_when_as_fast_as_ipv4_and_loses_when_clearly_slower(v6_delay, wins):
    """Round trips: IPv4 60 ms; IPv6 40 ms (faster), 60.8 ms (as good) or 80 ms (clearly slower)."""
    pair = DualPair(PORT_RESTRICTED_CONE, v6_delay=v6_delay)
    pair.scheduler.run_until(T0 + 30.0)
    for node, peer in ((pair.a, pair.b), (pair.b, pair.a)):
        expected = peer.address6 if wins == "ipv6" else peer.public
        assert node.finder.current_path == Path(PathKind.DIRECT, expected)
        assert all(when < T0 + 0.5 for when, _ in node.changes), "the choice is made in the first round"


def test_an_ipv6_path_that_dies_mid_flow_fails_over_within_a_second():
    pair = DualPair(SYMMETRIC_RANDOM)
    pair.flow(until=T0 + 30.0)
    pair.scheduler.run_until(T0 + 10.0)
    assert pair.a.finder.current_path == Path(PathKind.DIRECT, pair.b.address6)
    pair.links6[1].connected = False  # b's IPv6 breaks: routes stay, packets vanish
    pair.scheduler.run_until(T0 + 20.0)
    for node in (pair.a, pair.b):
        when, change = node.changes[-1]
        assert change.new == RELAY_PATH and change.reason is ChangeReason.PATH_SILENT
        assert T0 + 10.0 < when <= T0 + 11.0
    relayed = pair.relayed
    pair.scheduler.run_until(T0 + 25.0)
    assert pair.relayed > relayed, "traffic goes on through the relay"
