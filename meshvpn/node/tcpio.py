"""The daemon's asyncio side of TCP hole punching: the punch port, its connections and a timer.

The sans-IO :class:`~meshvpn.node.tcppunch.TcpPunch` decides everything; this shell binds the
punch port (``SO_REUSEADDR`` + ``SO_REUSEPORT``, so a listener, the coord connection and every
punch connect share it), follows ``Connect``/``Write``/``Abort``, hands every message that
arrives on a TCP path to the data path as if it came from a :class:`TcpEndpoint`, and turns
path events into core calls and ``punch_request`` messages. Every socket lingers 0 s, so closing
one sends RST and leaves no TIME_WAIT that would refuse the next punch between the same ports.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import struct
from typing import Callable, Optional

from meshvpn.control import messages as m
from meshvpn.node.core import NodeCore
from meshvpn.node.pathfinder import Path, PathKind
from meshvpn.node.tcppunch import Abort, Connect, PathDown, PathUp, TcpEndpoint, TcpPunch, WantPunch, Write
from meshvpn.wire import Endpoint

log = logging.getLogger("meshvpn.node.tcp")

MAX_WRITE_BUFFER = 4 << 20
"""Bytes queued on a TCP path beyond which messages are dropped before sealing (as a full link would)."""
_LINGER_RST = struct.pack("ii", 1, 0)


class _Stream(asyncio.Protocol):
    """One punch-port connection: bytes to the sans-IO core, which names it by `conn_id`."""

    def __init__(self, shell: TcpPunchShell, conn_id: Optional[int]) -> None:
        self.shell = shell
        self.conn_id = conn_id
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        if self.conn_id is None:
            host, port = transport.get_extra_info("peername")[:2]
            self.conn_id = self.shell.punch.accepted(Endpoint(ipaddress.ip_address(host).compressed, port),
                                                     self.shell.clock())
            if self.conn_id is None:
                transport.abort()
                return
        self.shell.streams[self.conn_id] = self
        self.shell.flush()

    def data_received(self, data: bytes) -> None:
        self.shell.data_received(self, data)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        shell = self.shell
        if self.conn_id is not None and shell.streams.get(self.conn_id) is self:
            del shell.streams[self.conn_id]
            shell.punch.connection_lost(self.conn_id, shell.clock())
            shell.flush()


class TcpPunchShell:
    """The punch port of one node daemon; inert (every call a no-op) if the port cannot be bound."""

    def __init__(self, core: NodeCore, punch: TcpPunch, on_messages: Callable[[list[tuple[bytes, Endpoint]]], None],
                 after_core: Callable[[], None], send_coord: Callable[[m.Message], object],
                 clock: Callable[[], float]) -> None:
        self.core = core
        self.punch = punch
        self.clock = clock
        self.streams: dict[int, _Stream] = {}
        self.address: Optional[tuple[str, int]] = None
        """Where the punch port is bound, once `start` succeeded."""
        self.from_punch_port = False
        """Whether the latest coord socket was bound to the punch port (the coord may report it)."""
        self._on_messages = on_messages
        self._after_core = after_core
        self._send_coord = send_coord
        self._connects: dict[int, asyncio.Task] = {}
        self._server: Optional[asyncio.AbstractServer] = None
        self._timer: Optional[asyncio.TimerHandle] = None

    async def start(self, host: str, port: int) -> None:
        """Listen on the punch port `host:port`; log and stay inert if it is taken."""
        try:
            listener = self._socket(host, port)
            listener.listen(64)
        except OSError as exc:
            log.warning("TCP hole punching off: cannot bind tcp %s:%d: %s", host, port, exc)
            return
        self.address = (host, port)
        self._server = await asyncio.get_running_loop().create_server(lambda: _Stream(self, None), sock=listener)
        log.info("TCP punch port %s:%d", host, port)

    def coord_socket(self) -> socket.socket:
        """A socket for the coord connection: from the punch port if possible, else any port."""
        self.from_punch_port = False
        if self.address is not None:
            try:
                sock = self._socket(*self.address)
                self.from_punch_port = True
                return sock
            except OSError as exc:
                log.info("coord connection not from the punch port: %s", exc)
        sock = socket.socket(_family(self.address[0] if self.address else "0.0.0.0"), socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    # ---- from the daemon --------------------------------------------------------------

    def coord_message(self, msg: m.Message) -> None:
        """On the coord's ``punch``, punch over TCP too unless the peer has a UDP path."""
        if self.address is None or not isinstance(msg, m.Punch):
            return
        peer = self.core.peers.by_key.get(msg.peer_key)
        if peer is None or peer.info.public_tcp is None or _udp_direct(peer.route and peer.route.path):
            return
        self.punch.punch(peer.key, Endpoint(peer.info.public_tcp.host, peer.info.public_tcp.port), self.clock())
        self.flush()

    def path_changed(self, name: str, new: Optional[Path]) -> None:
        """A UDP path replaced whatever the peer had: its TCP path and punching are not needed."""
        peer = self.core.peers.find(name)
        if peer is not None and _udp_direct(new):
            self.punch.stop(peer.key)
            self.flush()

    def send(self, endpoint: TcpEndpoint, messages: list[bytes]) -> None:
        """Messages for the TCP path at `endpoint`; dropped while its socket is backed up."""
        conn = self.punch.path_conn(endpoint)
        stream = None if conn is None else self.streams.get(conn)
        if stream is None or stream.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            return
        self.punch.send(endpoint, messages, self.clock())
        self.flush()

    def status(self) -> dict:
        return {"listen": None if self.address is None else "%s:%d" % self.address, "peers": self.punch.status()}

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._connects.values():
            task.cancel()
        for stream in list(self.streams.values()):
            stream.transport.abort()
        if self._server is not None:
            self._server.close()

    # ---- from the streams ---------------------------------------------------------------

    def data_received(self, stream: _Stream, data: bytes) -> None:
        messages = self.punch.data_received(stream.conn_id, data, self.clock())
        self.flush()
        if messages:
            conn = self.punch.conn_endpoint(stream.conn_id)
            if conn is not None:
                self._on_messages([(message, conn) for message in messages])

    # ---- actions --------------------------------------------------------------------------

    def flush(self) -> None:
        """Carry out the core's actions and re-arm its timer."""
        punch = self.punch
        core_touched = False
        for action in punch.next_actions():
            if isinstance(action, Write):
                stream = self.streams.get(action.conn_id)
                if stream is not None:
                    stream.transport.write(action.data)
            elif isinstance(action, Connect):
                task = asyncio.get_running_loop().create_task(self._connect(action))
                self._connects[action.conn_id] = task
            elif isinstance(action, Abort):
                task = self._connects.pop(action.conn_id, None)
                if task is not None:
                    task.cancel()
                stream = self.streams.pop(action.conn_id, None)
                if stream is not None:
                    stream.transport.abort()
            elif isinstance(action, PathUp):
                log.info("TCP path to %s up at %s:%d", self._name(action.peer_key), *action.endpoint)
                self.core.set_tcp_path(action.peer_key, action.endpoint, self.clock())
                core_touched = True
            elif isinstance(action, PathDown):
                log.info("TCP path to %s down: %s", self._name(action.peer_key), action.reason)
                self.core.set_tcp_path(action.peer_key, None, self.clock())
                core_touched = True
            elif isinstance(action, WantPunch):
                self._send_coord(m.PunchRequest(peer_key=action.peer_key))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = punch.get_timer()
        if when is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, when - self.clock()), self._on_timer)
        if core_touched:
            self._after_core()

    def _on_timer(self) -> None:
        self._timer = None
        self.punch.handle_timer(self.clock())
        self.flush()

    async def _connect(self, action: Connect) -> None:
        loop = asyncio.get_running_loop()
        sock = None
        try:
            sock = self._socket(*self.address)
            await asyncio.wait_for(loop.sock_connect(sock, tuple(action.endpoint)), action.timeout)
            await loop.create_connection(lambda: _Stream(self, action.conn_id), sock=sock)
        except asyncio.CancelledError:
            if sock is not None:
                sock.close()
            raise
        except (OSError, asyncio.TimeoutError) as exc:
            if sock is not None:
                sock.close()
            log.debug("TCP punch to %s:%d: %s", *action.endpoint, exc or type(exc).__name__)
            if self._connects.pop(action.conn_id, None) is not None:
                self.punch.connect_failed(action.conn_id, self.clock())
                self.flush()
            return
        self._connects.pop(action.conn_id, None)
        self.punch.connected(action.conn_id, self.clock())
        self.flush()

    def _socket(self, host: str, port: int) -> socket.socket:
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def _name(self, key: bytes) -> str:
        peer = self.core.peers.by_key.get(key)
        return key.hex()[:8] if peer is None else peer.name


def _udp_direct(path: Optional[Path]) -> bool:
    return path is not None and path.kind in (PathKind.LAN, PathKind.DIRECT)


def _family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def punch_shell(core: NodeCore, on_messages, after_core, send_coord, clock) -> TcpPunchShell:
    """The shell around a fresh `TcpPunch` for `core`'s identity."""
    punch = TcpPunch(core.identity, os.urandom, core.config.wall_offset)
    return TcpPunchShell(core, punch, on_messages, after_core, send_coord, clock)
