"""A simulated node's TCP: its punch port and its streams to relays, on the host's `TcpStack`.

These are the daemon's shells over simulated TCP, doing what theirs do and deciding nothing:

* `PunchPort` (the daemon's `meshvpn.node.tcp.shell.PunchPort`) listens on the punch port and
  follows the node's ``TcpConnect`` (from the punch port, ports shared as ``SO_REUSEPORT`` lets
  them, or from a new port when ``fresh_port``), ``TcpWrite`` and ``TcpAbort``, gives a connect
  its ``timeout``, and reports each connection's life and bytes back to the node; a
  ``TcpSampleWanted`` is a TCP port sample at the world's STUN server (`meshvpn.sim.tcpstun`);
* `RelayStreams` (the daemon's `meshvpn.node.relay.shell.RelayStreams`) follows
  ``OpenRelayStream``, ``CloseRelayStream`` and ``SendRelayFrames``: it races the wish's targets
  as the daemon does (a `StreamTarget` every `eyeballs.STAGGER` while none has finished its
  handshake, the next at once when one failed), each a connection from an ephemeral port carrying
  the node's `RelayStreamEnd`, and the first whose channel comes up is the stream. A target inside
  TLS is the relay's TLS port with the same channel and no TLS layer (`meshvpn.tlsenvelope` is
  tested on its own): what matters here is which port a site lets out.

`owner` is the harness's node (`meshvpn.sim.pairs.Node`): its `node`, `now`, `pump()` and
`world.net.scheduler`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from meshvpn.errors import RemoteProtocolError
from meshvpn.node.events import (
    CloseRelayStream, OpenRelayStream, SendRelayFrames, TcpAbort, TcpConnect, TcpSampleWanted, TcpWrite,
)
from meshvpn.node.eyeballs import Race
from meshvpn.node.relay.streamend import RelayStreamEnd
from meshvpn.node.streamdial import StreamTarget
from meshvpn.sim.nodes import WALL_OFFSET
from meshvpn.sim.tcp import TcpConn, TcpStack
from meshvpn.sim.tcpstun import TcpSample
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

    def follow(self, action: TcpConnect | TcpWrite | TcpAbort | TcpSampleWanted) -> None:
        """Carry out one of the node's connection wishes."""
        if isinstance(action, TcpSampleWanted):
            TcpSample(self.owner, self.stack, self.owner.world.tcp_stun, action.peer_key)
        elif isinstance(action, TcpWrite):
            conn = self.conns.get(action.conn_id)
            if conn is not None:
                conn[0].write(action.data)
        elif isinstance(action, TcpConnect):
            handler = _Punched(self, action.conn_id, outgoing=True)
            conn = self.stack.connect(0 if action.fresh_port else self.port, tuple(action.endpoint), handler)
            handler.timer = self.owner.world.net.scheduler.call_later(action.timeout, self._timed_out, handler)
            self.conns[action.conn_id] = (conn, handler)
        else:
            conn = self.conns.pop(action.conn_id, None)
            if conn is not None:
                if conn[1].timer is not None:
                    conn[1].timer.cancel()
                conn[0].abort()

    def retransmitting(self) -> dict[int, bool]:
        """Whether each connection waits for a backed-off retransmission, by the node's `conn_id`
        (the daemon's shell asks the kernel, `meshvpn.node.tcpinfo`)."""
        return {conn_id: conn.retransmitting for conn_id, (conn, _) in self.conns.items()}

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


class _Attempt:
    """One connection attempt of a stream's race: the connection and the channel end it drives
    through the handshake (`RelayStreamEnd.handshake`), silent until it wins."""

    def __init__(self, stream: _RelayStream, target: StreamTarget) -> None:
        self.stream, self.target = stream, target
        self.conn: Optional[TcpConn] = None
        self.end: Optional[RelayStreamEnd] = None
        self.frames: list[bytes] = []
        """Frames that came along with the handshake, for the node once this attempt wins."""
        self.timer: Any = None

    def start(self) -> None:
        owner = self.stream.streams.owner
        self.timer = owner.world.net.scheduler.call_later(CONNECT_TIMEOUT, self._timed_out)
        self.conn = self.stream.streams.stack.connect(0, tuple(self.target.endpoint), self)

    def stop(self) -> None:
        """Closed on our side (lost the race, or the node's wish): no report."""
        if self.timer is not None:
            self.timer.cancel()
        if self.conn is not None:
            self.conn.close()

    def connected(self, conn: TcpConn) -> None:
        streams = self.stream.streams
        owner = streams.owner
        self.end = RelayStreamEnd(owner.node, self.stream.name, streams.identity_private, self.stream.key,
                                  owner.world.rng.randbytes(32), WALL_OFFSET + owner.now)
        conn.write(self.end.opening())

    def received(self, conn: TcpConn, data: bytes) -> None:
        owner, won = self.stream.streams.owner, self.stream.winner is self
        try:
            if won:
                self.end.receive(data, owner.now)
            else:
                self.frames += self.end.handshake(data)
        except RemoteProtocolError:
            conn.abort()
            self.closed(conn, "channel error")
            return
        conn.write(self.end.pending())
        if not won and self.end.established:
            self.stream.won(self)
        owner.pump()

    def closed(self, conn: TcpConn, reason: str) -> None:
        self.stream.ended(self, reason == "reset")

    def _timed_out(self) -> None:
        if self.stream.winner is not self:
            self.conn.abort()
            self.stream.ended(self)


class _RelayStream:
    """One stream to a relay: its targets raced as the daemon's `meshvpn.node.streamrace` does
    (one `eyeballs.Race`: the next attempt `STAGGER` after the last while none has finished its
    handshake, at once when one failed), then the winner's connection and channel end."""

    def __init__(self, streams: RelayStreams, name: str, key: bytes, targets: Sequence[StreamTarget]) -> None:
        self.streams, self.name, self.key = streams, name, key
        self.pending = list(targets)
        self.attempts: list[_Attempt] = []
        self.winner: Optional[_Attempt] = None
        self.race = Race()
        self.timer: Any = None

    @property
    def endpoint(self) -> Optional[Endpoint]:
        """Where the winner connected (None while racing)."""
        return None if self.winner is None else self.winner.target.endpoint

    def start(self) -> None:
        """Start every attempt that is due; report the stream failed when none is left."""
        now, scheduler = self.streams.owner.now, self.streams.owner.world.net.scheduler
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.race.start_now(now) and self.pending:
            attempt = _Attempt(self, self.pending.pop(0))
            self.attempts.append(attempt)
            self.race.started(now)
            attempt.start()
        if not self.attempts and self.winner is None:
            self.streams.ended(self)
        elif self.pending and (at := self.race.get_timer()) is not None:
            self.timer = scheduler.call_at(at, self.start)

    def won(self, attempt: _Attempt) -> None:
        """`attempt` finished its handshake first: the others are closed and the node hears of it."""
        self.race.won()
        self.winner = attempt
        attempt.timer.cancel()
        if self.timer is not None:
            self.timer.cancel()
        for other in self.attempts:
            if other is not attempt:
                other.stop()
        self.attempts = [attempt]
        attempt.end.up(self.streams.owner.now, attempt.target, attempt.frames)
        attempt.frames = []

    def ended(self, attempt: _Attempt, reset: bool = False) -> None:
        """`attempt` failed or closed (the relay `reset` it): the next one starts, or the stream is over."""
        if attempt not in self.attempts:
            return
        self.attempts.remove(attempt)
        attempt.timer.cancel()
        if attempt is self.winner:
            self.streams.ended(self, reset)
        else:
            self.race.failed(self.streams.owner.now)
            self.start()

    def send(self, frames: list[bytes]) -> None:
        if self.winner is not None:
            self.winner.conn.write(self.winner.end.seal(frames))

    def drop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for attempt in self.attempts:
            attempt.stop()
        self.attempts = []


class RelayStreams:
    """The streams to relays of one simulated node, by relay name."""

    def __init__(self, owner: Any, stack: TcpStack, identity_private: bytes) -> None:
        self.owner, self.stack, self.identity_private = owner, stack, identity_private
        self.streams: dict[str, _RelayStream] = {}

    def follow(self, wish: OpenRelayStream | CloseRelayStream | SendRelayFrames) -> None:
        """Carry out one of the node's stream wishes."""
        stream = self.streams.get(wish.name)
        if isinstance(wish, SendRelayFrames):
            if stream is not None:
                stream.send(wish.frames)
        elif isinstance(wish, OpenRelayStream):
            if stream is not None:
                self._drop(stream)
            stream = self.streams[wish.name] = _RelayStream(self, wish.name, wish.public_key, wish.targets)
            stream.start()
        elif stream is not None:
            self._drop(stream)

    def retransmitting(self) -> dict[str, bool]:
        """Whether each stream that is up waits for a backed-off retransmission, by relay name."""
        return {name: stream.winner.conn.retransmitting for name, stream in self.streams.items()
                if stream.winner is not None}

    def _drop(self, stream: _RelayStream) -> None:
        """Closed on the node's wish: no report."""
        del self.streams[stream.name]
        stream.drop()

    def ended(self, stream: _RelayStream, reset: bool = False) -> None:
        """The stream failed or closed by itself (the relay `reset` it): the node hears of it."""
        if self.streams.get(stream.name) is stream:
            del self.streams[stream.name]
            stream.drop()
            self.owner.node.relay_stream_ended(stream.name, self.owner.now, reset)
            self.owner.pump()
