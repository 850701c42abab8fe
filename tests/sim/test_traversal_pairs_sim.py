"""Every pair of NAT kinds gets a path, direct or through the relay, within `relay_after`.

The invariant the design promises whatever the two NATs are: once one node sends to the
other, both have a route by `relay_after` (plus the handshake's round trips), so traffic
flows both ways. Each node is the real `NodeCore` on a simulated host behind `meshvpn.sim`
NATs; around it sit the pieces its shell would provide, as small as they can be:

* a STUN server that answers ``b"S"`` with the source endpoint (the main socket's public
  endpoint at start, and each `SampleWanted` from a fresh socket);
* the extra sockets an `OpenMappings` asks for, and `socket_for` pinning on the way out;
* a relay that forwards envelopes between the nodes' main sockets (registered by a hello);
* a fake coord with the real one's punch rules: a `punch_request` sends a `punch` to both
  sides, each with the other's fresh sample (at most `SAMPLE_LIFETIME` old) and NAT report;
* a data path that opens transport messages with the peer's `KeyRing` and echoes each
  packet back through `packet_from_tun`.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest

from meshvpn import wire
from meshvpn.control import messages as m
from meshvpn.coord.membership import SAMPLE_LIFETIME
from meshvpn.keys import public_key
from meshvpn.node.core import CoreConfig, NodeCore
from meshvpn.node.events import OpenMappings, SampleWanted
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.prediction import Allocation, NatProfile
from meshvpn.node.traversal import nat_info
from meshvpn.sim import (
    FULL_CONE, PORT_RESTRICTED_CONE, RESTRICTED_CONE, SYMMETRIC_RANDOM, SYMMETRIC_SEQUENTIAL, Dependence, Host,
    Link, LinkDirection, Nat, NatBehavior, Network, PortAllocation, Scheduler,
)
from meshvpn.sim.nodes import ip_packet
from meshvpn.wire import Endpoint, MessageType

PORT = 41641
STUN = ("198.51.100.53", 3478)
RELAY = Endpoint("198.51.100.20", 7500)
CONTROL_DELAY = 0.03
NETWORK = m.NetworkInfo(name="sim", cidr="100.64.0.0/24")
RELAY_AFTER = CoreConfig().paths.relay_after
MARGIN = 0.5
"""Handshake and echo round trips over the relay after the fallback, with room to spare."""

EASY = NatProfile()
SEQUENTIAL = NatProfile(False, Allocation.SEQUENTIAL)
RANDOM = NatProfile(False, Allocation.RANDOM)


@dataclass(frozen=True)
class Kind:
    """A site's NAT as the simulator builds it, and the profile its node reports."""

    behavior: NatBehavior
    reported: NatProfile
    background: float = 0.0
    """New flows per second from other hosts behind the NAT (moves a sequential NAT on)."""
    carrier: NatBehavior | None = None
    """An ISP NAT in front of the site's (carrier-grade NAT)."""
    mapped: bool = False
    """The router forwards `MAPPED_PORT` to the node (UPnP IGD, NAT-PMP, PCP), which announces it."""


PORT_RANGE = NatBehavior(ports=PortAllocation.RANDOM, port_min=30000, port_max=40000)
KINDS = {
    "port-preserving": Kind(PORT_RESTRICTED_CONE, EASY),
    "full-cone": Kind(FULL_CONE, EASY),
    "restricted-cone": Kind(RESTRICTED_CONE, EASY),
    "port-range": Kind(PORT_RANGE, RANDOM),
    "port-range-known": Kind(PORT_RANGE, NatProfile(True, Allocation.RANDOM)),
    "address-dependent": Kind(NatBehavior(mapping=Dependence.ADDRESS_DEPENDENT, filtering=Dependence.ADDRESS_DEPENDENT,
                                          ports=PortAllocation.SEQUENTIAL), SEQUENTIAL),
    "sequential": Kind(SYMMETRIC_SEQUENTIAL, SEQUENTIAL, background=2.0),
    "random-ports": Kind(SYMMETRIC_RANDOM, RANDOM),
    "cgn": Kind(PORT_RESTRICTED_CONE, RANDOM, carrier=SYMMETRIC_RANDOM),
    "unreported": Kind(SYMMETRIC_RANDOM, EASY),
    "upnp": Kind(SYMMETRIC_RANDOM, RANDOM, mapped=True),
}
"""`port-range` is endpoint-independent with random ports: reported as random when the coord
has no second STUN address, as endpoint-independent when it has. `unreported` is a random-port
NAT whose node sent no profile (taken as endpoint-independent). `upnp` is a random-port NAT
whose router forwards a port to the node."""
MAPPED_PORT = 50000


def wan() -> Link:
    return Link(LinkDirection(0.01), LinkDirection(0.01))


class Node:
    """A `NodeCore` and the shell pieces it needs, on one simulated host."""

    def __init__(self, world: World, index: int, kind: Kind) -> None:
        net = world.net
        self.world, self.kind = world, kind
        self.name, self.address = f"node{index}", f"100.64.0.{index + 1}"
        realm, self.outer = net.internet, None
        if kind.carrier is not None:
            self.outer = Nat(net, f"192.0.2.{index + 1}", kind.carrier, link=wan())
            realm = self.outer.lan
        self.nat = Nat(net, f"10.99.{index}.1" if self.outer else f"203.0.113.{index + 1}", kind.behavior,
                       realm=realm, link=None if self.outer else wan())
        self.nat.set_background_traffic(kind.background)
        self.host = Host(net, f"192.168.{index + 1}.10", self.nat.lan)
        private = random.Random(index).randbytes(32)
        self.public = public_key(private)
        self.core = NodeCore(private, random.Random(world.seed * 10 + index).randbytes, CoreConfig())
        self.core.punching.set_nat_profile(kind.reported)
        self.mapped = Endpoint(self.nat.ip, MAPPED_PORT) if kind.mapped else None
        if kind.mapped:
            self.nat.forward(MAPPED_PORT, (self.host.ip, PORT))
        self.core.set_own_endpoints([Endpoint(self.host.ip, PORT)], Endpoint(self.observed_host, PORT), self.mapped)
        self.sock = self.host.bind(PORT, self._receiver(None))
        self.extra: list = []
        self.public_endpoint: tuple[str, int] | None = None
        self.sampling: list[bytes] = []
        self.received: list[tuple[float, bytes]] = []
        self._timer = None

    @property
    def now(self) -> float:
        return self.world.net.scheduler.now

    @property
    def observed_host(self) -> str:
        return (self.outer or self.nat).ip

    def info(self) -> m.PeerInfo:
        public = None if self.public_endpoint is None else m.Endpoint(*self.public_endpoint)
        mapped = None if self.mapped is None else m.Endpoint(*self.mapped)
        return m.PeerInfo(self.public, self.name, self.address, True, (m.Endpoint(self.host.ip, PORT),), public,
                          observed_host=self.observed_host, nat=nat_info(self.kind.reported), mapped_endpoint=mapped)

    def send(self, peer: Node, payload: bytes) -> None:
        self.core.packet_from_tun(self.core.peers.by_key[peer.public], ip_packet(self.address, peer.address, payload),
                                  self.now)
        self.pump()

    def route_to(self, peer: Node):
        return self.core.peers.by_key[peer.public].route

    # ---- the shell

    def _receiver(self, via: int | None):
        def receive(data: bytes, src) -> None:
            src = Endpoint(*src)
            if data[:1] == b"s":
                self._stun_answer(via, data)
            elif src == RELAY and data[1] == MessageType.RELAY:
                relayed = wire.decode_relay(data)
                self._datagram(bytes(relayed.inner), src, via, relayed.node_key)
            else:
                self._datagram(data, src, via, None)
            self.pump()
        return receive

    def _datagram(self, data: bytes, src: Endpoint, via: int | None, relayed_from: bytes | None) -> None:
        if data[1] not in (MessageType.DATA, MessageType.KEEPALIVE):
            self.core.datagram_received(data, src, self.now, relayed_from, via)
            return
        peer = self.core.peers.by_index.get(wire.transport_receiver_index(data))
        plain = None if peer is None else peer.ring.open(data)
        if plain is None or (relayed_from is not None and relayed_from != peer.key):
            return
        if relayed_from is None:
            peer.last_rx, peer.last_rx_src = self.now, src
        if plain:
            self.received.append((self.now, plain[20:]))
            if not plain[20:].startswith(b"echo "):
                self.core.packet_from_tun(peer, ip_packet(self.address, peer.address, b"echo " + plain[20:]), self.now)

    def _stun_answer(self, via: int | None, data: bytes) -> None:
        host, port = data[1:].decode().split(":")
        if via is None:
            self.public_endpoint = (host, int(port))
        elif self.sampling:
            self.core.punching.port_sampled(self.sampling.pop(0), Endpoint(host, int(port)), self.now)

    def pump(self) -> None:
        core = self.core
        for dst, data in core.datagrams_to_send():
            via = core.socket_for.get(dst)
            (self.sock if via is None else self.extra[via]).sendto(data, dst)
        for msg in core.coord_messages_to_send():
            self.world.net.scheduler.call_later(CONTROL_DELAY, self.world.coord_receive, self, msg)
        while (event := core.next_event()) is not None:
            if isinstance(event, SampleWanted):
                self.sampling.append(event.peer_key)
                self._new_socket().sendto(b"S", STUN)
            elif isinstance(event, OpenMappings):
                for probe in event.probes:
                    self._new_socket().sendto(probe, event.endpoint)
            else:
                self.on_event(event)
        if self._timer is not None:
            self._timer.cancel()
        when = core.get_timer()
        self._timer = None if when is None else self.world.net.scheduler.call_at(max(when, self.now), self._on_timer)

    def on_event(self, event: object) -> None:
        """Any other event of the core (a subclass may act on it)."""

    def _new_socket(self):
        sock = self.host.bind(0, None)
        sock.on_receive = self._receiver(len(self.extra))
        self.extra.append(sock)
        return sock

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self.now)
        self.pump()


class World:
    """Two nodes, a STUN server, a relay and the fake coord on one simulated internet."""

    node_class = Node

    def __init__(self, kind_a: Kind, kind_b: Kind, seed: int) -> None:
        self.seed = seed
        self.net = Network(Scheduler(), random.Random(seed))
        stun = Host(self.net, STUN[0]).bind(STUN[1], None)
        stun.on_receive = lambda data, src: stun.sendto(b"s%s:%d" % (src[0].encode(), src[1]), src)
        self.relay = Host(self.net, RELAY[0]).bind(RELAY[1], None)
        self.relay.on_receive = self._relay
        self.registered: dict[bytes, tuple[str, int]] = {}
        self.a, self.b = self.node_class(self, 0, kind_a), self.node_class(self, 1, kind_b)
        self.samples: dict[bytes, tuple[m.Endpoint, float]] = {}

    def start(self) -> None:
        for node in (self.a, self.b):
            node.sock.sendto(b"S", STUN)
            node.sock.sendto(b"hello" + node.public, RELAY)
        self.net.scheduler.run_for(0.2)
        for node, other in ((self.a, self.b), (self.b, self.a)):
            node.core.coord_message(m.Registered(node.public, node.name, node.address, NETWORK), self.now)
            node.core.coord_message(m.PeerMap((other.info(),)), self.now)
            node.core.set_relay(RELAY, self.now)
            node.pump()

    @property
    def now(self) -> float:
        return self.net.scheduler.now

    def _relay(self, data: bytes, src) -> None:
        if data.startswith(b"hello"):
            self.registered[data[5:]] = src
            return
        envelope = wire.decode_relay(data)
        sender = next((key for key, endpoint in self.registered.items() if endpoint == src), None)
        if sender is None or envelope.node_key not in self.registered:
            return
        self.relay.sendto(wire.encode_relay(sender, envelope.inner), self.registered[envelope.node_key])

    def coord_receive(self, node: Node, msg: m.Message) -> None:
        if not isinstance(msg, m.PunchRequest):
            return
        if msg.sample is not None:
            self.samples[node.public] = (msg.sample, self.now)
        peer = self.b if node is self.a else self.a
        for to, about in ((node, peer), (peer, node)):
            to.core.coord_message(self._punch_towards(about), self.now)
            to.pump()

    def _punch_towards(self, node: Node) -> m.Punch:
        sample, at = self.samples.get(node.public, (None, 0.0))
        sample = sample if sample is not None and self.now - at <= SAMPLE_LIFETIME else None
        info = node.info()
        ordered = [sample] if sample else []
        ordered += [info.public_endpoint] if info.public_endpoint else []
        ordered += [m.Endpoint(node.observed_host, PORT), *info.local_endpoints]
        return m.Punch(node.public, tuple(dict.fromkeys(ordered)), nat=info.nat, sample=sample)


def meet(name_a: str, name_b: str, seed: int = 1) -> tuple[World, float]:
    """Start both nodes, let `a` send one packet to `b`, and run past the deadline."""
    world = World(KINDS[name_a], KINDS[name_b], seed)
    world.start()
    start = world.now
    world.a.send(world.b, b"ping")
    world.net.scheduler.run_until(start + RELAY_AFTER + MARGIN)
    return world, start


@pytest.mark.parametrize("name_a, name_b", list(itertools.product(KINDS, repeat=2)))
def test_every_pair_of_nat_kinds_has_a_path_within_relay_after(name_a: str, name_b: str) -> None:
    world, start = meet(name_a, name_b)
    a, b = world.a, world.b
    assert [payload for _, payload in b.received] == [b"ping"], "a's packet reached b"
    assert [payload for _, payload in a.received] == [b"echo ping"], "b had a route back"
    assert a.route_to(b) is not None and b.route_to(a) is not None
    b.send(a, b"from b")
    world.net.scheduler.run_for(0.2)
    assert a.received[-1][1] == b"from b" and b.received[-1][1] == b"echo from b"


@pytest.mark.parametrize("name_a, name_b", [
    ("sequential", "random-ports"), ("random-ports", "sequential"),
    ("address-dependent", "cgn"), ("port-range", "address-dependent"),
])
def test_a_sequential_side_punches_against_a_random_peer_without_its_sample(name_a: str, name_b: str) -> None:
    world, _ = meet(name_a, name_b)
    sequential = world.a if KINDS[name_a].reported == SEQUENTIAL else world.b
    peer = world.b if sequential is world.a else world.a
    assert sequential.core.peers.by_key[peer.public].paths.stats.probes_sent > 0


def test_address_dependent_meets_random_ports_directly() -> None:
    """The random side probes the ports above the sample; the address-dependent side's one mapping
    towards the peer's address sits there and lets every port of that address in."""
    world, _ = meet("address-dependent", "random-ports")
    assert world.a.route_to(world.b).path.kind is PathKind.DIRECT
    assert world.b.route_to(world.a).path.kind is PathKind.DIRECT


@pytest.mark.parametrize("peer", ["random-ports", "sequential", "cgn", "upnp"])
def test_a_mapped_random_port_site_goes_direct_with_the_peers_it_relays_to_without_the_mapping(peer: str) -> None:
    """The peer probes the mapped endpoint, which lets anyone in; the reply leaves from it."""
    world, _ = meet("upnp", peer)
    assert world.a.route_to(world.b).path.kind is PathKind.DIRECT
    assert world.b.route_to(world.a).path.kind is PathKind.DIRECT
    assert world.b.route_to(world.a).endpoint == world.a.mapped
    if not KINDS[peer].mapped:
        without, _ = meet("random-ports", peer)
        assert without.b.route_to(without.a).path.kind is PathKind.RELAY
