"""An attacker on the internet replays captured path probes to put itself between two peers.

Issue 13, finding 2. Two nodes behind full-cone NATs that have no direct path yet (the coord
gave each only the other's LAN address, which the internet cannot route): their probes leave
their NATs and die, but the attacker sees them. It replays one to the receiver from its own
address and then forwards everything between the two NAT mappings, as a relay in the middle
would. Without freshness and address binding both nodes adopted the attacker as their
"direct" path; now neither does, and every refused probe is counted on the peer.
"""

import random

from test_node_sim import PORT, SimNode

from meshvpn.control import messages as m
from meshvpn.node.probes import PROBE_MAX_SKEW
from meshvpn.sim import FULL_CONE, Host, Nat, Network, Scheduler
from meshvpn.wire import MessageType

NETWORK = m.NetworkInfo(name="sim", cidr="100.64.0.0/24")
ATTACKER = "198.51.100.66"


class SilentCoord:
    """Hands out registrations and a peer map naming only LAN addresses; ignores what nodes send."""

    def __init__(self, net: Network, nodes: list[SimNode]):
        for node in nodes:
            node.coord = self
            others = tuple(m.PeerInfo(key=o.public, name=o.name, address=o.address, online=True,
                                      local_endpoints=(m.Endpoint(o.host.ip, PORT),)) for o in nodes if o is not node)
            net.scheduler.call_later(0.01, node.from_coord, m.Registered(node_key=node.public, name=node.name,
                                                                         address=node.address, network=NETWORK))
            net.scheduler.call_later(0.02, node.from_coord, m.PeerMap(peers=others))

    def receive(self, node: SimNode, msg: m.Message) -> None:
        pass


class Attacker:
    """Sees every probe on the internet; replays what it is told and forwards between two mappings."""

    def __init__(self, net: Network):
        self.net = net
        self.captured: list[tuple[tuple[str, int], bytes]] = []
        self.mappings: dict[str, tuple[str, int]] = {}
        """NAT address -> the node's mapping on it, as seen on the internet."""
        self.hosts = {}
        route = net.internet.route

        def tap(dgram):
            if len(dgram.data) > 1 and dgram.data[1] == MessageType.PROBE and dgram.src[0] != ATTACKER:
                self.captured.append((dgram.src, dgram.data))
                self.mappings.setdefault(dgram.src[0], dgram.src)
            route(dgram)

        net.internet.route = tap
        self.sock = self.host(ATTACKER).bind(4000, self._forward)

    def host(self, ip: str) -> Host:
        if ip not in self.hosts:
            self.hosts[ip] = Host(self.net, ip)
        return self.hosts[ip]

    def _forward(self, data: bytes, src) -> None:
        others = [mapping for nat, mapping in self.mappings.items() if nat != src[0]]
        for mapping in others:
            self.sock.sendto(data, mapping)

    def replay(self, data: bytes, dst, from_ip: str = ATTACKER) -> None:
        sock = self.sock if from_ip == ATTACKER else self.host(from_ip).bind(4000, lambda *_: None)
        sock.sendto(data, dst)


def build(seed: int):
    net = Network(Scheduler(), random.Random(seed))
    nats = [Nat(net, "203.0.113.1", FULL_CONE), Nat(net, "203.0.113.2", FULL_CONE)]
    a = SimNode(net, seed * 10, "a", "100.64.0.1", Host(net, "192.168.1.10", realm=nats[0].lan), nats[0])
    b = SimNode(net, seed * 10 + 1, "b", "100.64.0.2", Host(net, "192.168.2.11", realm=nats[1].lan), nats[1])
    SilentCoord(net, [a, b])
    attacker = Attacker(net)
    net.scheduler.run_for(0.1)
    return net, a, b, attacker


def probes_from(attacker: Attacker, node: SimNode) -> list[bytes]:
    return [data for src, data in attacker.captured if src[0] == node.nat.ip]


def attacked_paths(a: SimNode, b: SimNode) -> list:
    paths = [a.path_to(b), b.path_to(a)]
    return [p for p in paths if p is not None and p.endpoint is not None and p.endpoint[0] == ATTACKER]


def test_a_replayed_probe_does_not_make_the_attacker_a_direct_path():
    net, a, b, attacker = build(3)
    a.send_ip(b, b"to b")
    b.send_ip(a, b"to a")
    net.scheduler.run_for(0.5)
    assert probes_from(attacker, a) and b.nat.ip in attacker.mappings, "the probes leave the NATs and die"
    assert a.path_to(b) is None and b.path_to(a) is None
    attacker.replay(probes_from(attacker, a)[-1], attacker.mappings[b.nat.ip])
    net.scheduler.run_for(5.0)
    assert attacked_paths(a, b) == []
    a_drops = a.core.peers.by_key[b.public].counters.drops
    assert a_drops["probe for another address"] >= 1, "b's probe to the attacker, forwarded to a, is refused"
    assert b.core.peers.by_key[a.public].paths.stats.misrouted_replies + a_drops["probe for another address"] >= 1


def test_replays_are_taken_once_and_cannot_crowd_out_observed_mappings():
    net, a, b, attacker = build(4)
    a.send_ip(b, b"to b")
    b.send_ip(a, b"to a")
    net.scheduler.run_for(0.5)
    probe = probes_from(attacker, a)[-1]
    attacker.replay(probe, attacker.mappings[b.nat.ip])
    net.scheduler.run_for(0.2)
    finder = b.core.peers.by_key[a.public].paths
    before = list(finder.candidates)
    for n in range(finder.config.max_observed + 4):
        attacker.replay(probe, attacker.mappings[b.nat.ip], from_ip=f"198.51.100.{70 + n}")
    net.scheduler.run_for(0.5)
    assert b.core.peers.by_key[a.public].counters.drops["replayed probe"] == finder.config.max_observed + 4
    assert finder.candidates == before, "no replay adds an observed candidate"


def test_a_captured_probe_held_back_goes_stale():
    net, a, b, attacker = build(5)
    a.send_ip(b, b"to b")
    b.send_ip(a, b"to a")
    net.scheduler.run_for(0.5)
    held = probes_from(attacker, a)[0]
    net.scheduler.run_for(PROBE_MAX_SKEW + 5.0)
    b.send_ip(a, b"keep the mapping")
    net.scheduler.run_for(0.1)
    attacker.replay(held, attacker.mappings[b.nat.ip])
    net.scheduler.run_for(0.5)
    assert b.core.peers.by_key[a.public].counters.drops["stale probe"] == 1
    assert attacked_paths(a, b) == []
