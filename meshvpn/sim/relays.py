"""The real relay core on a simulated host, and the coord's key that signs its tokens.

The relay answers on its UDP port and takes TCP streams on the same port and, given one, on its
TLS port (`TLS_PORT` in the pairs harness): each a `meshvpn.relay.streamend.StreamEnd`, as the
daemon's listeners run them; the TLS listener carries the same channel without the TLS layer. A relay killed in a test is a closed
socket and no listeners (`SimRelay.kill`); a restarted one has lost every registration and
every stream, as a real restart has (`SimRelay.restart`).
"""

from __future__ import annotations

from typing import Iterable

from meshvpn import keys, noise
from meshvpn.config import RelayLimits
from meshvpn.control import messages as m
from meshvpn.errors import RemoteProtocolError
from meshvpn.relay.core import RelayCore, Stream
from meshvpn.relay.streamend import StreamEnd
from meshvpn.relaytoken import TokenMinter
from meshvpn.sim.clock import Scheduler
from meshvpn.sim.network import Host, Link, LinkDirection, Network, Realm
from meshvpn.sim.nodes import WALL_OFFSET
from meshvpn.sim.tcp import TcpConn, TcpStack
from meshvpn.wire import Endpoint

COORD = bytes([1]) * 32
"""The coord's private key: relays trust tokens it signs."""
PORT = 7500
TLS_PORT = 443


class SimRelay:
    """A relay core on a simulated host `delay` seconds from the internet, or from `realm` (a NAT's
    LAN that forwards the relay's port: then nodes reach it at `public`, the NAT's address)."""

    def __init__(self, scheduler: Scheduler, net: Network, name: str, address: str, delay: float, rng,
                 realm: Realm | None = None, public: str | None = None, tls_port: int | None = None) -> None:
        self.scheduler, self.rng = scheduler, rng
        self.private = bytes([len(name)]) + rng.randbytes(31)
        self.info = m.RelayInfo(name, public or address, PORT, keys.public_key(self.private), tls_port=tls_port)
        self.endpoint = Endpoint(public or address, PORT)
        self.host = Host(net, address, realm=realm, link=Link(LinkDirection(delay), LinkDirection(delay)))
        self.sock = self.host.bind(PORT, self._on_datagram)
        self.tcp = TcpStack(self.host)
        self.ports = (PORT,) if tls_port is None else (PORT, tls_port)
        """The TCP ports it listens on: its UDP port, and its TLS port if it has one."""
        for port in self.ports:
            self.tcp.listen(port, self._accept)
        self.restart()

    def restart(self) -> None:
        """A fresh core: every registration and every stream is lost."""
        self._reset_streams()
        self.core = RelayCore(self.private, keys.public_key(COORD), RelayLimits(), self.rng.randbytes, self.wall())

    def kill(self) -> None:
        """The relay dies: nothing is received or answered any more, its streams are reset."""
        self.sock.close()
        for port in self.ports:
            self.tcp.unlisten(port)
        self._reset_streams()

    def _reset_streams(self) -> None:
        for conn in list(self.tcp.conns.values()):
            conn.abort()

    def _accept(self, conn: TcpConn) -> _Connection:
        return _Connection(self, conn)

    def flush(self) -> None:
        """Send what the core produced: datagrams, stream frames, stream closes."""
        for dst, out in self.core.datagrams_to_send():
            self.sock.sendto(out, dst)
        for stream in self.core.streams_to_flush():
            stream.conn_id.write_queued()
        for stream in self.core.streams_to_close():
            stream.conn_id.conn.close()

    def wall(self) -> float:
        return WALL_OFFSET + self.scheduler.now

    def _on_datagram(self, data: bytes, src) -> None:
        self.core.receive(data, Endpoint(*src), self.wall())
        self.flush()


class _Connection:
    """One node's stream at the simulated relay."""

    def __init__(self, relay: SimRelay, conn: TcpConn) -> None:
        self.relay, self.conn = relay, conn
        self.end = StreamEnd(relay.core, Stream(self), noise.StaticIdentity.from_private(relay.private),
                             relay.rng.randbytes(32))

    def connected(self, conn: TcpConn) -> None:
        pass

    def received(self, conn: TcpConn, data: bytes) -> None:
        try:
            conn.write(self.end.receive(data, self.relay.wall()))
        except RemoteProtocolError:
            conn.close()
            self.end.closed()
            return
        self.relay.flush()

    def closed(self, conn: TcpConn, reason: str) -> None:
        self.end.closed()

    def write_queued(self) -> None:
        self.conn.write(self.end.queued())


def relay_tokens(minter: TokenMinter, relays: Iterable[m.RelayInfo], node_key: bytes,
                 now: float) -> tuple[m.RelayToken, ...]:
    """The tokens the coord gives a node for each relay (`now` on the simulated clock)."""
    tokens = []
    for info in relays:
        token, expires = minter.mint(info.public_key, node_key, WALL_OFFSET + now)
        tokens.append(m.RelayToken(info.name, token, float(expires)))
    return tuple(tokens)
