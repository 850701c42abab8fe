"""Nodes behind simulated NATs, with a fake coord that relays the control messages.

Each node is the real `Node` and data path on a simulated host: datagrams go through
`meshvpn.sim` NATs (RFC 4787 behaviours), the coord is a few lines that hand out the
peer map and turn a `punch_request` into a `punch` for both sides.
"""

import random

import pytest

from meshvpn.control import messages as m
from meshvpn.node.pathfinder import PathKind
from meshvpn.sim import PORT_RESTRICTED_CONE, Host, Nat, Network, Scheduler
from meshvpn.sim.nodes import MemoryNode, ip_packet
from meshvpn.wire import Endpoint

PORT = 41641
CONTROL_DELAY = 0.03
NETWORK = m.NetworkInfo(name="sim", cidr="100.64.0.0/24")


class SimNode:
    """A node (the harness's `MemoryNode`) on a simulated host, driven by the scheduler."""

    def __init__(self, net: Network, seed: int, name: str, address: str, host: Host, nat: Nat):
        self.net, self.name, self.address, self.host, self.nat = net, name, address, host, nat
        self.mem = MemoryNode(random.Random(seed).randbytes(32), random.Random(seed + 1).randbytes, name, address,
                              Endpoint(host.ip, PORT))
        self.public = self.mem.public
        self.mem.node.set_own_endpoints([Endpoint(host.ip, PORT)], Endpoint(nat.ip, PORT))
        self.sock = host.bind(PORT, self._on_datagram)
        self.tun = self.mem.tun
        self.coord = None
        self._timer = None

    @property
    def core(self):
        return self.mem.core

    @property
    def now(self) -> float:
        return self.net.scheduler.now

    def info(self) -> m.PeerInfo:
        return m.PeerInfo(
            key=self.public, name=self.name, address=self.address, online=True,
            local_endpoints=(m.Endpoint(self.host.ip, PORT),), observed_host=self.nat.ip,
        )

    def send_ip(self, dst: "SimNode", payload: bytes) -> None:
        self.mem.send(ip_packet(self.address, dst.address, payload), self.now)
        self._transmit()

    def _on_datagram(self, data: bytes, src) -> None:
        self.mem.receive([(data, src)], self.now)
        self._transmit()

    def from_coord(self, msg: m.Message) -> None:
        self.mem.from_coord(msg, self.now)
        self._transmit()

    def _on_timer(self) -> None:
        self._timer = None
        self.mem.tick(self.now)
        self._transmit()

    def _transmit(self) -> None:
        for dst, data in self.mem.collect():
            self.sock.sendto(data, dst)
        for msg in self.mem.coord_out:
            self.net.scheduler.call_later(CONTROL_DELAY, self.coord.receive, self, msg)
        self.mem.coord_out.clear()
        self.mem.take_events()
        if self._timer is not None:
            self._timer.cancel()
        when = self.mem.node.get_timer()
        self._timer = None if when is None else self.net.scheduler.call_at(when, self._on_timer)

    def path_to(self, other: "SimNode"):
        route = self.mem.peers.by_key[other.public].route
        return None if route is None else route.path


class FakeCoord:
    """Registers every node, sends the peer maps, and answers punch_request with two punches."""

    def __init__(self, net: Network, nodes: list[SimNode]):
        self.net, self.nodes = net, nodes
        self.punches = 0
        for node in nodes:
            node.coord = self
            self._send(node, m.Registered(node_key=node.public, name=node.name, address=node.address, network=NETWORK))
            self._send(node, m.PeerMap(peers=tuple(o.info() for o in nodes if o is not node)))

    def _send(self, node: SimNode, msg: m.Message) -> None:
        decoded = m.decode(m.encode(msg))
        self.net.scheduler.call_later(CONTROL_DELAY, node.from_coord, decoded)

    def receive(self, node: SimNode, msg: m.Message) -> None:
        if isinstance(msg, m.PunchRequest):
            self.punches += 1
            peer = next(n for n in self.nodes if n.public == msg.peer_key)
            for a, b in ((node, peer), (peer, node)):
                endpoints = (m.Endpoint(b.host.ip, PORT), m.Endpoint(b.nat.ip, PORT))
                self._send(a, m.Punch(peer_key=b.public, endpoints=endpoints))


def build(seed: int, sites: list[str]):
    """Nodes behind NATs; nodes naming the same site share one NAT (one LAN)."""
    net = Network(Scheduler(), random.Random(seed))
    nats: dict[str, Nat] = {}
    nodes = []
    for i, site in enumerate(sites):
        if site not in nats:
            nats[site] = Nat(net, f"203.0.113.{len(nats) + 1}", PORT_RESTRICTED_CONE)
        host = Host(net, f"192.168.{len(nats)}.{10 + i}", realm=nats[site].lan)
        nodes.append(SimNode(net, seed * 100 + i, f"node{i}", f"100.64.0.{i + 1}", host, nats[site]))
    coord = FakeCoord(net, nodes)
    net.scheduler.run_for(0.5)
    return net, nodes, coord


def test_two_nodes_behind_two_nats_go_direct_within_one_second():
    net, (a, b), coord = build(1, ["home", "office"])
    start = net.scheduler.now
    a.send_ip(b, b"hello over the mesh")
    net.scheduler.run_for(1.0)
    assert [p[20:] for p in b.tun] == [b"hello over the mesh"]
    assert a.path_to(b).kind is PathKind.DIRECT and b.path_to(a).kind is PathKind.DIRECT
    assert a.path_to(b).endpoint == (b.nat.ip, PORT)
    assert coord.punches == 1
    b.send_ip(a, b"and back")
    net.scheduler.run_for(0.1)
    assert [p[20:] for p in a.tun] == [b"and back"]
    assert net.scheduler.now - start < 1.2


def test_two_nodes_behind_one_nat_use_the_lan_path():
    net, (a, b), _ = build(2, ["home", "home"])
    a.send_ip(b, b"next door")
    net.scheduler.run_for(1.0)
    assert [p[20:] for p in b.tun] == [b"next door"]
    assert a.path_to(b).kind is PathKind.LAN and a.path_to(b).endpoint == (b.host.ip, PORT)
    assert b.path_to(a).kind is PathKind.LAN


@pytest.mark.parametrize("seed", [3, 4])
def test_three_nodes_full_mesh_and_idle_paths_stay_up_for_minutes(seed):
    net, nodes, _ = build(seed, ["a", "b", "c"])
    for src in nodes:
        for dst in nodes:
            if src is not dst:
                src.send_ip(dst, f"{src.name}->{dst.name}".encode())
    net.scheduler.run_for(1.0)
    for node in nodes:
        assert sorted(p[20:] for p in node.tun) == sorted(
            f"{o.name}->{node.name}".encode() for o in nodes if o is not node
        )
        assert all(node.path_to(o).kind is PathKind.DIRECT for o in nodes if o is not node)
    net.scheduler.run_for(300.0)
    a, b, _ = nodes
    assert a.path_to(b).kind is PathKind.DIRECT, "keepalive probes hold the NAT mappings"
    a.send_ip(b, b"after five minutes")
    net.scheduler.run_for(0.5)
    assert b.tun[-1][20:] == b"after five minutes"
