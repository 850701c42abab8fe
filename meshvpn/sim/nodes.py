"""The node test harness: IP packet builders and a node driven in memory (aioquic's ``client_and_server``).

:class:`MemoryNode` is the real :class:`~meshvpn.node.node.Node` and its
:class:`~meshvpn.node.datapath.dataplane.DataPlane` with an in-memory TUN and no sockets: the test (or a
simulated network) moves its datagrams, a plain float ``now`` is the clock, and :meth:`MemoryNode.drain`
is the one loop that carries out the node's outputs, as the daemon's ``_transmit`` does.
:class:`Wire` moves datagrams between nodes at one instant; a simulated network with NATs and
delays moves them in ``tests/sim``.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Callable, Iterable, Optional

from meshvpn.control import messages as m
from meshvpn.keys import public_key
from meshvpn.node import events as ev
from meshvpn.node.core import CoreConfig
from meshvpn.node.datapath.dataplane import DataPlane
from meshvpn.node.node import Node
from meshvpn.wire import Endpoint

NETWORK = m.NetworkInfo(name="home", cidr="100.64.0.0/24")
ALICE_AT, BOB_AT = Endpoint("192.0.2.1", 41641), Endpoint("198.51.100.2", 41641)
WALL_OFFSET = 1.7e9
"""Wall clock minus the simulated monotonic clock: handshake timestamps look like today's."""
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = 17


def ip_packet(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    """A minimal IPv4 header (the data path needs no checksum) and `payload`."""
    return _IPV4.pack(0x45, 0, 20 + len(payload), 0, 0, 64, _UDP, 0, ipaddress.IPv4Address(src).packed,
                      ipaddress.IPv4Address(dst).packed) + payload


def sized_packet(src: str, dst: str, size: int = 100, fill: int = 0) -> bytes:
    """An IPv4 packet of `size` bytes in all, its payload `fill` repeated."""
    return ip_packet(src, dst, bytes([fill]) * (size - 20))


class MemoryNode:
    """A node and its data path with an in-memory TUN; the caller moves the datagrams."""

    def __init__(self, private_key: bytes, random_bytes: Callable[[int], bytes], name: str, address: str,
                 endpoint: Endpoint, config: Optional[CoreConfig] = None, coord_public: Optional[bytes] = None) -> None:
        self.private, self.public = private_key, public_key(private_key)
        self.name, self.address, self.endpoint = name, address, endpoint
        self.node = Node(private_key, random_bytes, config if config is not None else CoreConfig(wall_offset=WALL_OFFSET),
                         coord_public=coord_public)
        self.node.set_own_endpoints([endpoint], None)
        self.data = DataPlane(self.node)
        self.tun: list[bytes] = []
        """Packets the data path wrote to the TUN."""
        self.sent: list[tuple[Endpoint, bytes]] = []
        """Datagrams sealed or produced and not yet collected."""
        self.coord_out: list[m.Message] = []
        self.other_out: list[ev.Output] = []
        """Everything else the node asked for (stream and relay wishes, STUN answers), in order."""
        self.events: list[ev.Event] = []

    @property
    def core(self):
        return self.node.core

    @property
    def peers(self):
        return self.node.peers

    def info(self, **fields) -> m.PeerInfo:
        """How the coord describes this node to its peers (its endpoint as its public one)."""
        fields.setdefault("public_endpoint", m.Endpoint(*self.endpoint))
        return m.PeerInfo(key=self.public, name=self.name, address=self.address, online=True, **fields)

    def register(self, *others: MemoryNode, network: m.NetworkInfo = NETWORK, now: float = 0.0) -> None:
        """The coord's welcome: our address, then a peer map of `others`."""
        self.from_coord(m.Registered(node_key=self.public, name=self.name, address=self.address, network=network), now)
        self.from_coord(m.PeerMap(peers=tuple(o.info() for o in others)), now)

    def from_coord(self, msg: m.Message, now: float) -> None:
        self.node.receive_coord(msg, now)
        self.drain(now)

    def send(self, packet: bytes, now: float) -> None:
        """One packet from the TUN: sealed by the data path, or handed to the node."""
        for dst, msgs in self.data.outbound([packet], now).items():
            self.sent += [(dst, msg) for msg in msgs]
        self.drain(now)

    def receive(self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float) -> None:
        """Datagrams from the network: transport data to the TUN, the rest to the node."""
        self.tun += self.data.inbound(datagrams, now)
        self.drain(now)

    def tick(self, now: float) -> None:
        self.node.handle_timer(now)
        self.drain(now)

    def drain(self, now: float) -> None:
        """Carry out the node's outputs in order, as the daemon does."""
        while outputs := self.node.outputs():
            for out in outputs:
                match out:
                    case ev.SendDatagram(dst, data):
                        self.sent.append((dst, data))
                    case ev.SendCoord(msg):
                        self.coord_out.append(msg)
                    case ev.Deliver(datagrams):
                        self.tun += self.data.inbound(datagrams, now)
                    case ev.AddressAssigned() | ev.PeerMapChanged() | ev.PeerPathChanged() | ev.PeerUp() | \
                            ev.PeerDown() | ev.PingReply() | ev.CoordRejected() | ev.SampleWanted() | ev.OpenMappings() | ev.CloseMappings() | \
                            ev.TcpPathChanged() | ev.RelayHomeChanged() | ev.RelaySkipped() | ev.TurnChanged():
                        self.events.append(out)
                    case _:
                        self.other_out.append(out)

    def collect(self) -> list[tuple[Endpoint, bytes]]:
        """The datagrams to send since the last call."""
        out, self.sent = self.sent, []
        return out

    def take_events(self) -> list[ev.Event]:
        out, self.events = self.events, []
        return out


def seeded(rng: Callable[[int], object], seed: int, name: str, address: str, endpoint: Endpoint) -> MemoryNode:
    """A node whose key and randomness come from `rng(seed)` and `rng(seed + 1000)` (``random.Random``)."""
    return MemoryNode(rng(seed).randbytes(32), rng(seed + 1000).randbytes, name, address, Endpoint(*endpoint))


def alice_and_bob(rng: Callable[[int], object]) -> tuple[MemoryNode, MemoryNode, Wire]:
    """Two registered nodes that know each other, and the wire between them."""
    a = seeded(rng, 1, "alice", "100.64.0.1", ALICE_AT)
    b = seeded(rng, 2, "bob", "100.64.0.2", BOB_AT)
    a.register(b)
    b.register(a)
    return a, b, Wire(a, b)


class Wire:
    """Delivers every datagram at once to the node owning its destination; records them all."""

    def __init__(self, *nodes: MemoryNode) -> None:
        self.nodes = {node.endpoint: node for node in nodes}
        self.log: list[tuple[Endpoint, Endpoint, bytes]] = []

    def pump(self, now: float, rounds: int = 20) -> None:
        """Move datagrams until none is left (at most `rounds` rounds: a loop is a failure)."""
        for _ in range(rounds):
            moved = False
            for src in list(self.nodes.values()):
                for dst, data in src.collect():
                    moved = True
                    self.log.append((src.endpoint, dst, data))
                    target = self.nodes.get(dst)
                    if target is not None:
                        target.receive([(data, src.endpoint)], now)
            if not moved:
                return
        raise AssertionError("datagrams still flowing after many rounds")

    def tick(self, now: float) -> None:
        for node in self.nodes.values():
            node.tick(now)
        self.pump(now)
