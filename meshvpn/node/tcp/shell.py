"""The daemon's asyncio side of TCP hole punching: the punch port and its connections, no decisions.

The node (:class:`~meshvpn.node.node.Node`, through its :class:`~meshvpn.node.tcp.core.TcpPunch`)
decides everything; this shell binds the punch port (``SO_REUSEADDR`` + ``SO_REUSEPORT``, so a
listener, the coord connection and every punch connect share it), follows ``TcpConnect``,
``TcpWrite`` and ``TcpAbort``, and reports each connection's life and bytes back to the node.
Every socket lingers 0 s, so closing one sends RST and leaves no TIME_WAIT that would refuse
the next punch between the same ports. A punch port on the IPv4 wildcard address has an IPv6
twin on the same port (``[::]``, IPv6 only): peers' global IPv6 addresses are punched from it,
through stateful IPv6 firewalls as through NATs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from typing import Awaitable, Callable, Optional

from meshvpn.node.events import TcpAbort, TcpConnect, TcpSampleWanted, TcpWrite
from meshvpn.node.node import Node
from meshvpn.node.tcpinfo import retransmitting
from meshvpn.stun import StunError
from meshvpn.stuntcp import tcp_binding
from meshvpn.wire import Endpoint

log = logging.getLogger("meshvpn.node.tcp")

SAMPLE_TIMEOUT = 1.0
"""Seconds a TCP port sample may take before the punch goes on without it."""
MAX_WRITE_BUFFER = 4 << 20
"""Bytes queued on a TCP path beyond which messages are dropped before sealing (as a full link would)."""
_LINGER_RST = struct.pack("ii", 1, 0)


class _Stream(asyncio.Protocol):
    """One punch-port connection, named by the node's `conn_id`."""

    def __init__(self, port: PunchPort, conn_id: Optional[int]) -> None:
        self.port = port
        self.conn_id = conn_id
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        port = self.port
        if self.conn_id is None:
            host, remote_port = transport.get_extra_info("peername")[:2]
            self.conn_id = port.node.tcp_accepted(Endpoint(ipaddress.ip_address(host).compressed, remote_port),
                                                  port.clock())
            if self.conn_id is None:
                transport.abort()
                port.transmit()
                return
        else:
            port.node.tcp_connected(self.conn_id, port.clock())
        port.streams[self.conn_id] = self
        port.transmit()

    def data_received(self, data: bytes) -> None:
        self.port.node.receive_tcp(self.conn_id, data, self.port.clock())
        self.port.transmit()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        port = self.port
        if self.conn_id is not None and port.streams.get(self.conn_id) is self:
            del port.streams[self.conn_id]
            port.node.tcp_closed(self.conn_id, port.clock())
            port.transmit()


class PunchPort:
    """The punch port of one node daemon; inert (nothing punched) if the port cannot be bound."""

    def __init__(self, node: Node, transmit: Callable[[], None], clock: Callable[[], float],
                 stun_server: Optional[Callable[[int], Awaitable[Endpoint]]] = None) -> None:
        self.node = node
        self.transmit = transmit
        """The daemon's drain of the node's outputs, called after every input."""
        self.clock = clock
        self.stun_server = stun_server
        """The coord's STUN server in an address family, for TCP port samples (None: no samples)."""
        self.streams: dict[int, _Stream] = {}
        self.address: Optional[tuple[str, int]] = None
        """Where the punch port is bound, once `start` succeeded."""
        self.address6: Optional[tuple[str, int]] = None
        """The punch port's IPv6 twin, when `address` is the IPv4 wildcard and IPv6 works here."""
        self._connects: dict[int, asyncio.Task] = {}
        self._samples: set[asyncio.Task] = set()
        self._server: Optional[asyncio.AbstractServer] = None
        self._server6: Optional[asyncio.AbstractServer] = None

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
        self.node.enable_tcp_punch()
        log.info("TCP punch port %s:%d", host, port)
        if host == "0.0.0.0" and socket.has_ipv6:
            await self._start6(port)

    async def _start6(self, port: int) -> None:
        """Listen on the IPv6 twin of the punch port; without IPv6 here, punch over IPv4 alone."""
        try:
            listener = self._socket("::", port)
            listener.listen(64)
        except OSError as exc:
            log.info("TCP punching over IPv4 only: cannot bind tcp [::]:%d: %s", port, exc)
            return
        self.address6 = ("::", port)
        self._server6 = await asyncio.get_running_loop().create_server(lambda: _Stream(self, None), sock=listener)
        log.info("TCP punch port [::]:%d", port)

    def coord_socket(self) -> socket.socket:
        """A socket for the coord connection: from the punch port if possible, else any port."""
        if self.address is not None:
            try:
                return self._socket(*self.address)
            except OSError as exc:
                log.info("coord connection not from the punch port: %s", exc)
        sock = socket.socket(_family(self.address[0] if self.address else "0.0.0.0"), socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    def carries(self, sockname: Optional[tuple]) -> bool:
        """Whether a connection whose end is `sockname` left from the punch port, so that the coord
        sees (and may pass on) the port's mapping: not when the race for the coord was won over
        IPv6 (`meshvpn.node.coordlink`), or the port could not be bound again."""
        return (self.address is not None and sockname is not None and sockname[1] == self.address[1]
                and _family(sockname[0]) == _family(self.address[0]))

    def can_send(self, conn_id: Optional[int]) -> bool:
        """Whether connection `conn_id` exists and is not backed up."""
        stream = None if conn_id is None else self.streams.get(conn_id)
        return stream is not None and stream.transport.get_write_buffer_size() <= MAX_WRITE_BUFFER

    def retransmitting(self) -> dict[int, Optional[bool]]:
        """Whether each connection waits for a backed-off retransmission, by the node's `conn_id`, as
        the kernel says (`meshvpn.node.tcpinfo`; None where it does not say)."""
        return {conn_id: retransmitting(stream.transport.get_extra_info("socket"))
                for conn_id, stream in self.streams.items()}

    def follow(self, action: TcpConnect | TcpWrite | TcpAbort | TcpSampleWanted) -> None:
        """Carry out one of the node's connection wishes."""
        if isinstance(action, TcpWrite):
            stream = self.streams.get(action.conn_id)
            if stream is not None:
                stream.transport.write(action.data)
        elif isinstance(action, TcpConnect):
            self._connects[action.conn_id] = asyncio.get_running_loop().create_task(self._connect(action))
        elif isinstance(action, TcpSampleWanted):
            self._samples.add(asyncio.get_running_loop().create_task(self._sample(action.peer_key)))
        else:
            task = self._connects.pop(action.conn_id, None)
            if task is not None:
                task.cancel()
            stream = self.streams.pop(action.conn_id, None)
            if stream is not None:
                stream.transport.abort()

    def listen_text(self) -> Optional[str]:
        return None if self.address is None else "%s:%d" % self.address

    async def close(self) -> None:
        for task in [*self._connects.values(), *self._samples]:
            task.cancel()
        for stream in list(self.streams.values()):
            stream.transport.abort()
        for server in (self._server, self._server6):
            if server is not None:
                server.close()

    async def _sample(self, peer_key: bytes) -> None:
        """A TCP port sample from a new connection to the coord's STUN server (None if none came)."""
        sample = None
        try:
            if self.address is not None and self.stun_server is not None:
                server = await self.stun_server(_family(self.address[0]))
                host, port = (await tcp_binding(tuple(server), (self.address[0], 0), SAMPLE_TIMEOUT))[:2]
                sample = Endpoint(ipaddress.ip_address(host).compressed, port)
        except (OSError, asyncio.TimeoutError, StunError, ValueError) as exc:
            log.info("no TCP port sample: %s", exc or type(exc).__name__)
        finally:
            self._samples.discard(asyncio.current_task())
        self.node.tcp_sampled(peer_key, sample, self.clock())
        self.transmit()

    async def _connect(self, action: TcpConnect) -> None:
        loop = asyncio.get_running_loop()
        sock = None
        try:
            local = self.address6 if _family(action.endpoint[0]) != _family(self.address[0]) else self.address
            if local is None:
                raise OSError("no punch port in the endpoint's address family")
            sock = self._socket(local[0], 0 if action.fresh_port else local[1])
            await asyncio.wait_for(loop.sock_connect(sock, tuple(action.endpoint)), action.timeout)
            self._connects.pop(action.conn_id, None)
            await loop.create_connection(lambda: _Stream(self, action.conn_id), sock=sock)
        except asyncio.CancelledError:
            if sock is not None:
                sock.close()
            raise
        except (OSError, asyncio.TimeoutError) as exc:
            if sock is not None:
                sock.close()
            log.debug("TCP punch to %s:%d: %s", *action.endpoint, exc or type(exc).__name__)
            self._connects.pop(action.conn_id, None)
            self.node.tcp_connect_failed(action.conn_id, self.clock())
            self.transmit()

    def _socket(self, host: str, port: int) -> socket.socket:
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        try:
            if self.address is not None and _family(host) != _family(self.address[0]):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the twin: IPv4 is the port's
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return sock


def _family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET

