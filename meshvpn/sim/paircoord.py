"""The fake coord of the pairs harness: its punch rules, and its end of each node's link.

The coord has the real one's punch rules: a `punch_request` sends a `punch` to both sides, each
with the other's fresh sample (at most `SAMPLE_LIFETIME` old) and NAT report; an `endpoints`
message, or a `relay_home` (the relay round trips a relayed pair chooses by), is passed on to
the peers as a `peer_update`.

Each node's link is a TCP connection on the simulated network (`meshvpn.sim.coordlink`, the
node's end, with the daemon's dialer, keepalive and silence rules), from the node's punch port to
`COORD_AT` through its site's NATs: the coord registers the node on its `register`, answers its
pings and notes the connection's source, the NAT's mapping of the punch port, which it hands to
peers as ``public_tcp`` (where TCP hole punching connects to); each registration reaches the
peers in a `peer_update`, as the real coord announces a node that comes online. A killed coord's
connections are closed and new ones refused until it restarts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from meshvpn.control import messages as m
from meshvpn.coord.membership import SAMPLE_LIFETIME
from meshvpn.sim.coordlink import COORD_AT, CoordLink, Frames, frame
from meshvpn.sim.network import Host, Link, LinkDirection
from meshvpn.sim.tcp import TcpConn, TcpStack

if TYPE_CHECKING:
    from meshvpn.sim.pairs import Node, World

__all__ = ["COORD_AT", "Coord", "CoordLink"]


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
        self.heard: dict[bytes, list[float]] = {}
        """When each frame of each node arrived (the link's liveness as the coord sees it)."""
        self.tcp = TcpStack(Host(world.net, COORD_AT.host, link=Link(LinkDirection(0.0), LinkDirection(0.0))))
        self.tcp.listen(COORD_AT.port, self._accept)
        self._conns: dict[bytes, TcpConn] = {}
        """Each registered node's connection."""

    def jitter(self) -> float:
        return self.world.rng.random()

    def link(self, node: Node) -> CoordLink:
        if node.public not in self.links:
            self.links[node.public] = CoordLink(node, self.scheduler, self.jitter)
        return self.links[node.public]

    def kill(self) -> None:
        """The coord process dies: the kernel closes its connections (FIN: it had read everything),
        and refuses new ones until it restarts."""
        self.alive = False
        self.tcp.unlisten(COORD_AT.port)
        for conn in list(self.tcp.conns.values()):
            conn.close()
        self._conns.clear()

    def restart(self) -> None:
        self.alive = True
        self.tcp.listen(COORD_AT.port, self._accept)

    def _accept(self, conn: TcpConn) -> _Served:
        return _Served(self)

    def registered_on(self, conn: TcpConn, node: Node) -> None:
        """`node` registered on `conn` (which replaces any connection it had), its punch port seen from
        `conn.remote`: the welcome goes to it, and its info, with that mapping, to every peer."""
        old = self._conns.get(node.public)
        if old is not None and old is not conn:
            old.abort()
        self._conns[node.public] = conn
        known, self.public_tcp[node.public] = self.public_tcp.get(node.public), m.Endpoint(*conn.remote)
        self.welcome(node)
        if known != self.public_tcp[node.public]:
            for peer in self.world.others(node):
                self._send(peer, m.PeerUpdate(node.info()))

    def conn_closed(self, conn: TcpConn, node: Optional[Node]) -> None:
        if node is not None and self._conns.get(node.public) is conn:
            del self._conns[node.public]

    def welcome(self, node: Node) -> None:
        self._send(node, self.world.registered(node))
        self._send(node, m.PeerMap(tuple(peer.info() for peer in self.world.others(node))))

    def send_from(self, node: Node, msg: m.Message) -> None:
        """A message on the node's link; lost unless the link is registered (state is sent again on reconnect)."""
        self.link(node).send(msg)

    def _send(self, node: Node, msg: m.Message) -> None:
        conn = self._conns.get(node.public)
        if conn is not None:
            conn.write(frame(msg))

    def receive(self, node: Node, msg: m.Message, conn: TcpConn) -> None:
        """A message from `node` on `conn`, taken if that is its registered connection."""
        if self._conns.get(node.public) is not conn:
            return
        self.heard.setdefault(node.public, []).append(self.scheduler.now)
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


class _Served:
    """The coord's end of one connection: registers the node its `register` names, answers pings."""

    def __init__(self, coord: Coord) -> None:
        self.coord = coord
        self.node: Optional[Node] = None
        self._frames = Frames()

    def connected(self, conn: TcpConn) -> None:
        pass

    def received(self, conn: TcpConn, data: bytes) -> None:
        for msg in self._frames.feed(data):
            if isinstance(msg, m.Ping):
                conn.write(frame(m.Pong()))
            elif isinstance(msg, m.Register):
                self.node = self.coord.world.by_name(msg.hostname)
                if self.node is not None:
                    self.coord.registered_on(conn, self.node)
            elif self.node is not None:
                self.coord.receive(self.node, msg, conn)

    def closed(self, conn: TcpConn, reason: str) -> None:
        self.coord.conn_closed(conn, self.node)
