"""An in-memory UDP network: hosts, sockets, links and routing realms (TCP: `meshvpn.sim.tcp`).

The network is a tree of realms. The root realm is the public internet; every `Nat` owns
one more realm, its LAN, and sits in its parent realm under its public address, so a NAT
inside another NAT's LAN is carrier-grade NAT. A datagram travels hop by hop: over the
sender's uplink into its realm, to a member of that realm (over the member's downlink),
or up through the realm's NAT into the parent realm.

Everything happens on a `Scheduler`; delay, jitter and loss draw from a random source the
test passes in (anything with `.random()` and `.randrange()`), so runs are repeatable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Optional, Protocol

from meshvpn.sim.clock import Scheduler

if TYPE_CHECKING:
    from meshvpn.sim.tcp import TcpStack

Endpoint = tuple[str, int]
ReceiveCallback = Callable[[bytes, Endpoint], None]

EPHEMERAL_PORTS = (49152, 65535)


class RandomSource(Protocol):
    """The part of `random.Random` the simulation uses."""

    def random(self) -> float: ...

    def randrange(self, start: int, stop: int) -> int: ...


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram in flight, as addressed on the wire it is currently on."""

    proto: ClassVar[str] = "udp"
    """Which protocol's rules a NAT and a host apply (`meshvpn.sim.tcp.Segment` says "tcp")."""
    src: Endpoint
    dst: Endpoint
    data: bytes


@dataclass
class LinkDirection:
    """Impairments of one direction of a link."""

    delay: float = 0.005
    """Fixed one-way delay in seconds."""
    jitter: float = 0.0
    """Extra delay drawn uniformly from [0, jitter); can reorder datagrams."""
    loss: float = 0.0
    """Probability in [0, 1] that a datagram is dropped."""


@dataclass
class Link:
    """The link attaching a host or NAT to its realm; `up` leads towards the realm."""

    up: LinkDirection = field(default_factory=LinkDirection)
    down: LinkDirection = field(default_factory=LinkDirection)
    connected: bool = True
    """False drops everything in both directions (a pulled cable)."""


class Member(Protocol):
    """Anything with an address in a realm: a host, or a NAT's public side."""

    ip: str
    link: Link

    def receive(self, dgram: Datagram) -> None: ...


class Gateway(Protocol):
    """What a realm hands datagrams for addresses outside it to (a `Nat`)."""

    def outbound(self, dgram: Datagram) -> None: ...


class Realm:
    """One addressing domain: the internet, or the LAN behind one NAT."""

    def __init__(self, network: Network, name: str, gateway: Gateway | None) -> None:
        self.network = network
        self.name = name
        self.gateway = gateway
        self.members: dict[str, Member] = {}

    def attach(self, member: Member) -> None:
        """Give `member` its address here; addresses are unique within a realm."""
        if member.ip in self.members:
            raise ValueError(f"{member.ip} is already in use in realm {self.name}")
        self.members[member.ip] = member

    def route(self, dgram: Datagram) -> None:
        """Forward a datagram that reached this realm's router."""
        member = self.members.get(dgram.dst[0])
        if member is not None:
            self.network.transmit(member.link, member.link.down, member.receive, dgram)
        elif self.gateway is not None:
            self.gateway.outbound(dgram)
        else:
            self.network.drops["no route"] += 1


class UdpSocket:
    """A bound UDP port on a simulated host."""

    def __init__(self, host: Host, port: int, on_receive: ReceiveCallback) -> None:
        self.host = host
        self.port = port
        self.on_receive = on_receive

    @property
    def address(self) -> Endpoint:
        """The local (ip, port) this socket is bound to."""
        return (self.host.ip, self.port)

    def sendto(self, data: bytes, dst: Endpoint) -> None:
        """Send one datagram; like UDP, delivery is not guaranteed."""
        self.host.send(Datagram(self.address, dst, bytes(data)))

    def close(self) -> None:
        """Release the port; later datagrams to it are dropped."""
        if self.host.sockets.get(self.port) is self:
            del self.host.sockets[self.port]


class Host:
    """An end host with one address in one realm and any number of UDP sockets."""

    def __init__(self, network: Network, ip: str, realm: Realm | None = None,
                 link: Link | None = None) -> None:
        self.network = network
        self.ip = ip
        self.realm = realm if realm is not None else network.internet
        self.link = link if link is not None else Link()
        self.sockets: dict[int, UdpSocket] = {}
        self.tcp: Optional[TcpStack] = None
        """The host's TCP (`meshvpn.sim.tcp.TcpStack`), once one is attached: TCP is dropped until then."""
        self._next_ephemeral = EPHEMERAL_PORTS[0]
        self.realm.attach(self)

    def bind(self, port: int, on_receive: ReceiveCallback) -> UdpSocket:
        """Open a UDP socket on `port` (0 picks a free ephemeral port)."""
        if port == 0:
            port = self._free_ephemeral_port()
        if port in self.sockets:
            raise ValueError(f"{self.ip}:{port} is already bound")
        sock = UdpSocket(self, port, on_receive)
        self.sockets[port] = sock
        return sock

    def _free_ephemeral_port(self) -> int:
        low, high = EPHEMERAL_PORTS
        for _ in range(high - low + 1):
            port = self._next_ephemeral
            self._next_ephemeral = low if port == high else port + 1
            if port not in self.sockets:
                return port
        raise ValueError(f"no free ephemeral port on {self.ip}")

    def send(self, dgram: Datagram) -> None:
        """Put a datagram on this host's uplink."""
        self.network.transmit(self.link, self.link.up, self.realm.route, dgram)

    def receive(self, dgram: Datagram) -> None:
        """Hand a datagram that reached this host to the socket bound to its port (a TCP
        segment to the host's TCP)."""
        if dgram.proto != "udp":
            if self.tcp is None:
                self.network.drops["no tcp"] += 1
            else:
                self.tcp.receive(dgram)
            return
        sock = self.sockets.get(dgram.dst[1])
        if sock is None:
            self.network.drops["port unreachable"] += 1
            return
        self.network.delivered += 1
        sock.on_receive(dgram.data, dgram.src)


class Network:
    """The simulated internet: the root realm, the scheduler and the random source."""

    def __init__(self, scheduler: Scheduler, rng: RandomSource) -> None:
        self.scheduler = scheduler
        self.rng = rng
        self.internet = Realm(self, "internet", gateway=None)
        self.drops: Counter[str] = Counter()
        """Datagrams dropped, by reason ("loss", "link down", "filtered", ...)."""
        self.delivered = 0
        """Datagrams handed to a socket."""

    def transmit(self, link: Link, direction: LinkDirection,
                 deliver: Callable[[Datagram], None], dgram: Datagram) -> None:
        """Carry `dgram` over one direction of `link`, then call `deliver` with it."""
        if not link.connected:
            self.drops["link down"] += 1
            return
        if direction.loss and self.rng.random() < direction.loss:
            self.drops["loss"] += 1
            return
        delay = direction.delay
        if direction.jitter:
            delay += direction.jitter * self.rng.random()
        self.scheduler.call_later(delay, deliver, dgram)
