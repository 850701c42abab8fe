"""The fake coord of the pairs harness, and each node's link to it.

The coord has the real one's punch rules: a `punch_request` sends a `punch` to both sides, each
with the other's fresh sample (at most `SAMPLE_LIFETIME` old) and NAT report; an `endpoints`
message, or a `relay_home` (the relay round trips a relayed pair chooses by), is passed on to
the peers as a `peer_update`. Its messages take `CONTROL_DELAY` each way.

Each node's link follows the daemon's rules through the real `Dialer` (`meshvpn.node.coorddial`):
a killed coord resets every connection at once, and a link that dropped waits the dialer's
backoff (jittered from the test's random source) before each new attempt; an attempt reaches a
coord that runs in a round trip and registers, or is refused by the dead coord's host in one.
A link whose node moved reconnects at once, as the daemon's does when its address vanished.

The coord also listens for TCP at `COORD_AT` on the simulated network: each node connects from
its punch port and says who it is (`dial_tcp`), as the daemon's coord connection leaves from the
punch port, so the coord sees the NAT's mapping of that port and hands it to peers as
``public_tcp``, where TCP hole punching connects to. A node that asks for it (its TCP path went
silent: `DiscoverEndpoints.reconnect_coord`) connects anew, and a new mapping seen there reaches
the peer in a `peer_update`, as the real coord's does on the node's new registration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from meshvpn.control import messages as m
from meshvpn.coord.membership import SAMPLE_LIFETIME
from meshvpn.node.coorddial import Dialer
from meshvpn.sim.network import Host
from meshvpn.sim.tcp import TcpConn, TcpStack
from meshvpn.wire import Endpoint

if TYPE_CHECKING:
    from meshvpn.sim.pairs import Node, World

CONTROL_DELAY = 0.015
"""One way between a node and the coord, seconds."""
COORD_AT = Endpoint("203.0.113.100", 443)


class CoordLink:
    """One node's connection to the coord: up (registered) or dialling with the dialer's waits."""

    def __init__(self, coord: Coord, node: Node) -> None:
        self.coord, self.node = coord, node
        self.dialer = Dialer()
        self.up = False
        self.registrations: list[float] = []
        """When each registration arrived at the node."""
        self._attempt = None

    def dropped(self) -> None:
        """The connection was reset: the first step of the backoff, then a new round."""
        self.up = False
        self._dial_in(self.dialer.dropped(self.coord.jitter()))

    def reconnect_now(self) -> None:
        """The node's address changed under the connection: a new round at once, without backoff."""
        self.up = False
        self._dial_in(0.0)

    def _dial_in(self, delay: float) -> None:
        if self._attempt is not None:
            self._attempt.cancel()
        self._attempt = self.coord.scheduler.call_later(delay, self._dial)

    def _dial(self) -> None:
        self._attempt = None
        self.dialer.plan([[COORD_AT]])
        endpoint = self.dialer.next_endpoint()
        answer = self._registered if self.coord.alive else self._refused
        self._attempt = self.coord.scheduler.call_later(2 * CONTROL_DELAY, answer, endpoint)

    def _refused(self, endpoint: Endpoint) -> None:
        self._attempt = None
        delay = self.dialer.unreachable(self.coord.jitter())
        self._dial_in(0.0 if delay is None else delay)

    def _registered(self, endpoint: Endpoint) -> None:
        self._attempt = None
        if not self.coord.alive:
            self._refused(endpoint)
            return
        self.dialer.reached()
        self.dialer.registered(endpoint)
        self.up = True
        self.coord.welcome(self.node)


class Coord:
    """Registers both nodes, passes endpoints on, turns a punch request into two punches; can die."""

    def __init__(self, world: World) -> None:
        self.world, self.scheduler = world, world.net.scheduler
        self.alive = True
        self.links: dict[bytes, CoordLink] = {}
        self.samples: dict[bytes, tuple[m.Endpoint, float]] = {}
        self.tcp_samples: dict[bytes, tuple[m.Endpoint, float]] = {}
        """Each node's newest TCP port sample (``punch_request.tcp_sample``), passed on as UDP samples are."""
        self.homes: dict[bytes, m.RelayHome] = {}
        """Each node's last `relay_home` (its home relay and round trips), shown to its peers."""
        self.public_tcp: dict[bytes, m.Endpoint] = {}
        """Each node's punch port as the coord's TCP listener saw it."""
        self.tcp = TcpStack(Host(world.net, COORD_AT.host))
        self.tcp.listen(COORD_AT.port, lambda conn: _TcpHello(self))
        self._tcp_conns: dict[bytes, TcpConn] = {}

    def dial_tcp(self, node: Node) -> None:
        """`node` connects from its punch port and names itself (its key, the first 32 bytes)."""
        self._tcp_conns[node.public] = node.tcp.connect(node.port, COORD_AT, _TcpHello(self, node.public))

    def reconnect(self, node: Node) -> None:
        """The node drops its link (and its TCP connection) and connects again at once."""
        old = self._tcp_conns.get(node.public)
        if old is not None and old.stack is node.tcp:
            old.abort()
        self.dial_tcp(node)
        self.link(node).reconnect_now()

    def tcp_seen(self, key: bytes, public_tcp: m.Endpoint) -> None:
        """The node's punch port reached us from `public_tcp`; a new mapping goes to the peer."""
        known = self.public_tcp.get(key)
        self.public_tcp[key] = public_tcp
        node = next((n for n in (self.world.a, self.world.b) if n.public == key), None)
        if known is not None and known != public_tcp and node is not None:
            self._send(self.world.peer_of(node), m.PeerUpdate(node.info()))

    def jitter(self) -> float:
        return self.world.rng.random()

    def link(self, node: Node) -> CoordLink:
        if node.public not in self.links:
            self.links[node.public] = CoordLink(self, node)
        return self.links[node.public]

    def connect(self, node: Node) -> None:
        """The node's first registration: the welcome arrives after one way."""
        link = self.link(node)
        link.up = True
        link.dialer.registered(COORD_AT)
        self.welcome(node)

    def kill(self) -> None:
        """The coord process dies: every connection is reset."""
        self.alive = False
        for link in self.links.values():
            if link.up:
                self.scheduler.call_later(CONTROL_DELAY, link.dropped)

    def restart(self) -> None:
        self.alive = True

    def welcome(self, node: Node) -> None:
        self._send(node, self.world.registered(node))
        self._send(node, m.PeerMap(tuple(peer.info() for peer in self.world.others(node))))

    def send_from(self, node: Node, msg: m.Message) -> None:
        """A message on the node's link; lost if the link or the coord is down."""
        if self.link(node).up and node.connected:
            self.scheduler.call_later(CONTROL_DELAY, self._receive, node, msg)

    def _send(self, node: Node, msg: m.Message) -> None:
        self.scheduler.call_later(CONTROL_DELAY, self._deliver, node, m.decode(m.encode(msg)))

    def _deliver(self, node: Node, msg: m.Message) -> None:
        link = self.link(node)
        if self.alive and link.up and node.connected:
            node.from_coord(msg)
            if isinstance(msg, m.Registered):
                link.registrations.append(self.scheduler.now)
                node.registered()

    def _receive(self, node: Node, msg: m.Message) -> None:
        if not self.alive or not self.link(node).up:
            return
        if isinstance(msg, m.RelayHome):
            if self.homes.get(node.public) == msg:
                return
            self.homes[node.public] = msg
        if isinstance(msg, (m.Endpoints, m.RelayHome)):
            for peer in self.world.others(node):
                self._send(peer, m.PeerUpdate(node.info()))
        elif isinstance(msg, m.PunchRequest):
            peer = self.world.by_key(msg.peer_key)
            if peer is None:
                return
            if msg.sample is not None:
                self.samples[node.public] = (msg.sample, self.scheduler.now)
            if msg.tcp_sample is not None:
                self.tcp_samples[node.public] = (msg.tcp_sample, self.scheduler.now)
            for to, about in ((node, peer), (peer, node)):
                self._send(to, self.punch_towards(about))

    def punch_towards(self, node: Node) -> m.Punch:
        """The punch that tells a peer where `node` may be reached."""
        sample, at = self.samples.get(node.public, (None, 0.0))
        sample = sample if sample is not None and self.scheduler.now - at <= SAMPLE_LIFETIME else None
        info = node.info()
        ordered: list[Optional[m.Endpoint]] = [sample] if sample else []
        ordered += [info.public_endpoint] if info.public_endpoint else []
        ordered += [m.Endpoint(node.site.observed_host, node.port), *info.local_endpoints]
        tcp_sample, at = self.tcp_samples.get(node.public, (None, 0.0))
        tcp_sample = tcp_sample if tcp_sample is not None and self.scheduler.now - at <= SAMPLE_LIFETIME else None
        return m.Punch(node.public, tuple(dict.fromkeys(ordered)), nat=info.nat, sample=sample, tcp_sample=tcp_sample)


class _TcpHello:
    """Either end of a node's TCP connection to the coord: the node says its key, the coord notes the source."""

    def __init__(self, coord: Coord, key: bytes = b"") -> None:
        self.coord, self.key = coord, key

    def connected(self, conn: TcpConn) -> None:
        conn.write(self.key)

    def received(self, conn: TcpConn, data: bytes) -> None:
        self.coord.tcp_seen(data, m.Endpoint(*conn.remote))

    def closed(self, conn: TcpConn, reason: str) -> None:
        pass
