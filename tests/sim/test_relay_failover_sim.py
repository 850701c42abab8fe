"""The relay a relayed pair uses dies mid-flow: both ends leave it for the other relay within 2 s.

The nodes are the real `Node` and data path (`test_node_sim.SimNode`) behind random-port NATs,
so only a relay joins them; the two relays are the real `RelayCore` (`test_relay_sim.SimRelay`),
one near and one far, so both nodes make the near one home. Packets flow both ways every `GAP`;
then the near relay's socket closes. Relayed traffic that goes unanswered makes each node check
its home at once (`RelaySet.check`), and a home that does not answer is left for the far one.
"""

import random
from meshvpn.node.pathfinder import PathKind
from meshvpn.relaytoken import TokenMinter
from meshvpn.sim import Network, Scheduler
from meshvpn.sim.pairs import longest_gap
from test_node_sim import SimNode
from test_relay_cookie_sim import RelayingCoord, behind_random_nats
from meshvpn.sim.relays import COORD, SimRelay
from test_relay_sim import FAR, NEAR

GAP = 0.02
OUTAGE = 2.0
"""The target: neither direction stops for longer than this."""


class TimedNode(SimNode):
    """A `SimNode` that notes when each packet reached its TUN."""

    arrivals: list

    def _on_datagram(self, data, src):
        before = len(self.tun)
        super()._on_datagram(data, src)
        self.arrivals = getattr(self, "arrivals", []) + [self.now] * (len(self.tun) - before)


def keep_flowing(net, a, b):
    """A packet each way every `GAP`, for as long as the simulation runs."""
    a.send_ip(b, b"to b")
    b.send_ip(a, b"to a")
    net.scheduler.call_later(GAP, keep_flowing, net, a, b)


def test_a_dead_relay_is_left_within_two_seconds_by_both_ends():
    rng = random.Random(21)
    net = Network(Scheduler(), rng)
    near = SimRelay(net.scheduler, net, "near", *NEAR, rng)
    far = SimRelay(net.scheduler, net, "far", *FAR, rng)
    nodes = behind_random_nats(net, 400, TimedNode)
    a, b = nodes
    RelayingCoord(net, nodes, (far, near), TokenMinter(COORD, rng.randbytes))
    net.scheduler.run_for(1.0)
    keep_flowing(net, a, b)
    net.scheduler.run_for(4.0)
    assert a.path_to(b).kind is PathKind.RELAY and b.path_to(a).kind is PathKind.RELAY
    assert [node.mem.node.relays.home.name for node in nodes] == ["near", "near"]

    near.sock.close()
    killed = net.scheduler.now
    net.scheduler.run_for(OUTAGE)
    assert [node.mem.node.relays.home.name for node in nodes] == ["far", "far"], "both left it within 2 s"
    net.scheduler.run_for(4.0 - OUTAGE)
    assert [node.mem.node.relays.home.name for node in nodes] == ["far", "far"]
    for node in nodes:
        gap = longest_gap(node.arrivals, killed - 0.5, killed + 4.0)
        assert gap < OUTAGE, f"{node.name} heard nothing for {gap:.2f} s"
    assert far.core.stats.forwarded > 0
