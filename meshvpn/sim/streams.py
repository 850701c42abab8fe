"""A simulated node's TCP: its punch port and its streams to relays, on the host's `TcpStack`.

These are the daemon's shells over simulated TCP, doing what theirs do and deciding nothing:

* `PunchPort` (the daemon's `meshvpn.node.tcp.shell.PunchPort`) listens on the punch port and
  follows the node's ``TcpConnect``, ``TcpWrite`` and ``TcpAbort`` from it (ports are shared, as
  ``SO_REUSEPORT`` lets them), gives a connect its ``timeout``, and reports each connection's
  life and bytes back to the node;
* `RelayStreams` (the daemon's `meshvpn.node.relay.shell.RelayStreams`) follows
  ``OpenRelayStream``, ``CloseRelayStream`` and ``SendRelayFrames``: a connection from an
  ephemeral port carrying the node's `RelayStreamEnd`. A stream the node asks for inside TLS goes
  to the relay's TLS port with the same channel and no TLS layer (`meshvpn.tlsenvelope` is tested
  on its own): what matters here is which port a site lets out.

`owner` is the harness's node (`meshvpn.sim.pairs.Node`): its `node`, `now`, `pump()` and
`world.net.scheduler`.
"""

from __future__ import annotations

from typing import Any, Optional

from meshvpn.errors import RemoteProtocolError
from meshvpn.node.events import CloseRelayStream, OpenRelayStream, SendRelayFrames, TcpAbort, TcpConnect, TcpWrite
from meshvpn.node.relay.streamend import RelayStreamEnd
from meshvpn.sim.nodes import WALL_OFFSET
from meshvpn.sim.tcp import TcpConn, TcpStack
from meshvpn.wire import Endpoint

CONNECT_TIMEOUT = 5.0
"""Seconds a relay stream has to connect and bring its channel up (the daemon's ``streams.CONNECT_TIMEOUT``)."""


class _Punched:
    """The handler of one punch-port connection, named by the node's `conn_id`."""

    def __init__(self, port: PunchPort, conn_id: int, outgoing: bool) -> None:
        self.port, self.conn_id, self.outgoing = port, conn_id, outgoing
        self.up = not outgoing
        """Whether the connection got through its handshake (an accepted one has)."""
        self.timer: Any = None

    def connected(self, conn: TcpConn) -> None:
        self.up = True
        if self.outgoing:
            self.timer.cancel()
            self.port.owner.node.tcp_connected(self.conn_id, self.port.owner.now)
            self.port.owner.pump()

    def received(self, conn: TcpConn, data: bytes) -> None:
        self.port.owner.node.receive_tcp(self.conn_id, data, self.port.owner.now)
        self.port.owner.pump()

    def closed(self, conn: TcpConn, reason: str) -> None:
        self.port.ended(self, reason)


class PunchPort:
    """The punch port of one simulated node."""

    def __init__(self, owner: Any, stack: TcpStack, port: int) -> None:
        self.owner, self.stack, self.port = owner, stack, port
        self.conns: dict[int, tuple[TcpConn, _Punched]] = {}
        stack.listen(port, self._accept)
        owner.node.enable_tcp_punch()

    def follow(self, action: TcpConnect | TcpWrite | TcpAbort) -> None:
        """Carry out one of the node's connection wishes."""
        if isinstance(action, TcpWrite):
            conn = self.conns.get(action.conn_id)
            if conn is not None:
                conn[0].write(action.data)
        elif isinstance(action, TcpConnect):
            handler = _Punched(self, action.conn_id, outgoing=True)
            conn = self.stack.connect(self.port, tuple(action.endpoint), handler)
            handler.timer = self.owner.world.net.scheduler.call_later(action.timeout, self._timed_out, handler)
            self.conns[action.conn_id] = (conn, handler)
        else:
            conn = self.conns.pop(action.conn_id, None)
            if conn is not None:
                if conn[1].timer is not None:
                    conn[1].timer.cancel()
                conn[0].abort()

    def _accept(self, conn: TcpConn) -> Optional[_Punched]:
        conn_id = self.owner.node.tcp_accepted(Endpoint(*conn.remote), self.owner.now)
        handler = None if conn_id is None else _Punched(self, conn_id, outgoing=False)
        if handler is not None:
            self.conns[conn_id] = (conn, handler)
        self.owner.pump()
        return handler

    def _timed_out(self, handler: _Punched) -> None:
        entry = self.conns.get(handler.conn_id)
        if entry is not None and not entry[0].open:
            entry[0].abort()
            self.ended(handler, "timed out")

    def ended(self, handler: _Punched, reason: str) -> None:
        """A connection failed or closed: the node hears which, as the daemon's shell reports it."""
        entry = self.conns.get(handler.conn_id)
        if entry is None or entry[1] is not handler:
            return
        del self.conns[handler.conn_id]
        if handler.timer is not None:
            handler.timer.cancel()
        node, now = self.owner.node, self.owner.now
        if not handler.up:
            node.tcp_connect_failed(handler.conn_id, now)
        else:
            node.tcp_closed(handler.conn_id, now)
        self.owner.pump()


class _RelayStream:
    """One stream to a relay: the connection and, once it is up, the node's channel end."""

    def __init__(self, streams: RelayStreams, name: str, key: bytes) -> None:
        self.streams, self.name, self.key = streams, name, key
        self.conn: Optional[TcpConn] = None
        self.end: Optional[RelayStreamEnd] = None
        self.endpoint: Optional[Endpoint] = None
        self.timer: Any = None

    def connected(self, conn: TcpConn) -> None:
        owner = self.streams.owner
        self.end = RelayStreamEnd(owner.node, self.name, self.streams.identity_private, self.key,
                                  owner.world.rng.randbytes(32), WALL_OFFSET + owner.now)
        conn.write(self.end.opening())

    def received(self, conn: TcpConn, data: bytes) -> None:
        owner = self.streams.owner
        try:
            if self.end.receive(data, owner.now, self.endpoint):
                self.timer.cancel()
        except RemoteProtocolError:
            conn.abort()
            self.closed(conn, "channel error")
            return
        conn.write(self.end.pending())
        owner.pump()

    def closed(self, conn: TcpConn, reason: str) -> None:
        self.streams.ended(self)


class RelayStreams:
    """The streams to relays of one simulated node, by relay name."""

    def __init__(self, owner: Any, stack: TcpStack, identity_private: bytes) -> None:
        self.owner, self.stack, self.identity_private = owner, stack, identity_private
        self.streams: dict[str, _RelayStream] = {}

    def follow(self, wish: OpenRelayStream | CloseRelayStream | SendRelayFrames) -> None:
        """Carry out one of the node's stream wishes."""
        stream = self.streams.get(wish.name)
        if isinstance(wish, SendRelayFrames):
            if stream is not None and stream.end is not None:
                stream.conn.write(stream.end.seal(wish.frames))
        elif isinstance(wish, OpenRelayStream):
            if stream is not None:
                self._drop(stream)
            stream = self.streams[wish.name] = _RelayStream(self, wish.name, wish.public_key)
            stream.endpoint = wish.endpoint
            stream.conn = self.stack.connect(0, tuple(wish.endpoint), stream)
            stream.timer = self.owner.world.net.scheduler.call_later(CONNECT_TIMEOUT, self._timed_out, stream)
        elif stream is not None:
            self._drop(stream)

    def _drop(self, stream: _RelayStream) -> None:
        """Closed on the node's wish: no report."""
        del self.streams[stream.name]
        stream.timer.cancel()
        stream.conn.close()

    def _timed_out(self, stream: _RelayStream) -> None:
        if self.streams.get(stream.name) is stream:
            stream.conn.abort()
            self.ended(stream)

    def ended(self, stream: _RelayStream) -> None:
        """The stream failed or closed by itself: the node hears of it."""
        if self.streams.get(stream.name) is stream:
            del self.streams[stream.name]
            stream.timer.cancel()
            self.owner.node.relay_stream_ended(stream.name, self.owner.now)
            self.owner.pump()
