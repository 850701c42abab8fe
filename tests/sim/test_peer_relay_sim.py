"""A peer relay: a member on a reachable address relays for two members that cannot punch.

`a` and `b` sit behind random-port NATs, so only a relay joins them. The server relay is far
(40 ms each way); `host`, a member behind a full-cone NAT close to both, is allowed to relay
(the coord says `relaying`, and offers it to the others with a token minted for its key). Every
node is the real `Node` and data path; the server relay is the real `RelayCore`, and so is the
one inside `host`'s node. Both ends make the peer relay home (it answers sooner) and their
traffic goes through it, while `host` keeps its own direct paths; when `host` dies mid-flow,
both ends are on the server relay within 2 s.
"""

import random
from dataclasses import replace

from meshvpn import keys
from meshvpn.control import messages as m
from meshvpn.node.ctl import format_status
from meshvpn.node.pathfinder import PathKind
from meshvpn.relaytoken import TokenMinter
from meshvpn.sim import FULL_CONE, Host, Nat, Network, Scheduler
from meshvpn.sim.nodes import MemoryNode
from test_node_sim import PORT, SimNode
from test_relay_cookie_sim import RelayingCoord, behind_random_nats
from test_relay_failover_sim import OUTAGE, TimedNode, keep_flowing, longest_gap
from meshvpn.sim.nodes import WALL_OFFSET
from meshvpn.sim.relays import COORD, SimRelay
from test_relay_sim import FAR


class PeerRelayingCoord(RelayingCoord):
    """The fake coord with one peer relay: offered to the others, told to `host` itself."""

    def __init__(self, net, nodes, server, host, minter, tell_host=True):
        self.host, self.tell_host = host, tell_host
        self.peer_info = m.RelayInfo(host.name, host.nat.ip, PORT, host.public, peer=True)
        super().__init__(net, nodes, (server,), minter)

    def _send(self, node, msg):
        if isinstance(msg, m.Registered):
            relays = [relay.info for relay in self.relays] + ([self.peer_info] if node is not self.host else [])
            now = WALL_OFFSET + self.net.scheduler.now
            tokens = [m.RelayToken(info.name, *self._mint(info, node, now)) for info in relays]
            msg = replace(msg, relays=tuple(relays), relay_tokens=tuple(tokens), relaying=self.tell_host and node is self.host or None)
        self.net.scheduler.call_later(0.03, node.from_coord, m.decode(m.encode(msg)))

    def _mint(self, info, node, now):
        token, expires = self.minter.mint(info.public_key, node.public, now)
        return token, float(expires)


def relaying_host(net, seed):
    """`host`: a member behind a full-cone NAT that takes tokens of the coord `COORD`."""
    nat = Nat(net, "203.0.113.50", FULL_CONE)
    node = TimedNode(net, seed, "lanhost", "100.64.0.9", Host(net, "10.9.0.11", realm=nat.lan), nat)
    node.mem = MemoryNode(random.Random(seed).randbytes(32), random.Random(seed + 1).randbytes, "lanhost",
                          "100.64.0.9", node.mem.endpoint, coord_public=keys.public_key(COORD))
    node.mem.node.set_own_endpoints([node.mem.endpoint], m.Endpoint(nat.ip, PORT))
    node.tun = node.mem.tun
    return node


def guests_and_host(seed, tell_host=True):
    """`a` and `b` behind random-port NATs, the far server relay, and `host`, one second after the
    coord welcomed them (`tell_host`: whether `host` hears that it relays)."""
    rng = random.Random(seed)
    net = Network(Scheduler(), rng)
    server = SimRelay(net.scheduler, net, "far", *FAR, rng)
    a, b = behind_random_nats(net, seed * 10, TimedNode)
    host = relaying_host(net, seed * 10 + 5)
    PeerRelayingCoord(net, [a, b, host], server, host, TokenMinter(COORD, rng.randbytes), tell_host)
    net.scheduler.run_for(1.0)
    return net, server, a, b, host


def test_the_pair_goes_through_the_peer_relay_and_leaves_it_within_two_seconds_when_it_dies():
    net, server, a, b, host = guests_and_host(51)
    keep_flowing(net, a, b)
    host.send_ip(a, b"the host's own")
    net.scheduler.run_for(4.0)
    assert a.path_to(b).kind is PathKind.RELAY and b.path_to(a).kind is PathKind.RELAY
    assert [node.mem.node.relays.home.name for node in (a, b)] == ["lanhost", "lanhost"]
    relay = host.mem.node.peer_relay.core
    assert relay.stats.forwarded > 100 and server.core.stats.forwarded == 0
    assert host.path_to(a).kind is PathKind.DIRECT and b"the host's own" in [p[20:] for p in a.tun]
    assert "lanhost" not in host.mem.node.relays.links  # never a relay of its own
    to_b = next(e for e in a.mem.node.status(net.scheduler.now)["peers"] if e["name"] == "node1")
    assert (to_b["path"], to_b["relay"], to_b["peer_relay"]) == ("relay", "lanhost", True)
    assert "via lanhost (peer relay)" in format_status(a.mem.node.status(net.scheduler.now) | {"self": {
        "name": "node0", "overlay": None}})
    assert host.mem.node.status(net.scheduler.now)["self"]["relaying"]["nodes"] == 2

    host.sock.close()
    killed = net.scheduler.now
    net.scheduler.run_for(4.0)
    assert [node.mem.node.relays.home.name for node in (a, b)] == ["far", "far"]
    for node in (a, b):
        gap = longest_gap(node.arrivals, killed - 0.5, killed + 4.0)
        assert gap < OUTAGE, f"{node.name} heard nothing for {gap:.2f} s"
    assert server.core.stats.forwarded > 0


def test_a_node_the_coord_does_not_name_a_relay_relays_nothing():
    net, server, a, b, host = guests_and_host(62, tell_host=False)  # the others are offered it all the same
    a.send_ip(b, b"to b")
    net.scheduler.run_for(3.0)
    assert host.mem.node.peer_relay.core is None
    assert [node.mem.node.relays.home.name for node in (a, b)] == ["far", "far"]
    assert [p[20:] for p in b.tun] == [b"to b"]
