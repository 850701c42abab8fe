"""The node's end of the coordination channel, in asyncio: connect, register, exchange messages.

`connect` opens TCP, runs the `ClientChannel` handshake against the pinned server key and returns
a `CoordClient` once both ends hold the session keys. Decoded `messages.Message` objects come out
of `recv()` (or ``async for``); `send` seals one message. A channel or schema error from the
server closes the link, and `CoordLinkClosed` says why. With `keepalive` set the client pings on
its own, so the server's silence limit never applies to a healthy client; the server's pings
are answered here too and never delivered. Used by the node daemon's coord link
(`meshvpn.node.coordlink`), the integration tests and the scale bench.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections import deque
from typing import Optional, Union

from meshvpn import noise, tlsenvelope
from meshvpn.channel import ClientChannel
from meshvpn.control import messages as m
from meshvpn.control.mapparts import PeerMapAssembler
from meshvpn.errors import MeshError, RemoteProtocolError


class CoordLinkClosed(MeshError):
    """The channel to the coordination server is closed (or never opened); the text says why."""


class CoordUnreachable(CoordLinkClosed):
    """TCP to the server did not connect; `reason` is the system's word, `unresolved` a DNS failure."""

    def __init__(self, host: str, port: int, reason: str, unresolved: bool = False) -> None:
        super().__init__(f"cannot connect to {host}:{port}: {reason}")
        self.reason = reason
        self.unresolved = unresolved


class CoordHandshakeFailed(CoordLinkClosed):
    """TCP connected but the channel handshake did not finish (wrong pinned key, or not a coord)."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(text)
        self.reason = reason


class CoordRefused(MeshError):
    """The server answered `error`; `code` is the wire error code (e.g. auth_key_invalid)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


_CLOSED = object()
_PING, _PONG = m.encode(m.Ping()), m.encode(m.Pong())


class _LinkProtocol(asyncio.Protocol):
    """Bytes ↔ channel ↔ decoded messages for one connection."""

    def __init__(self, channel: ClientChannel, keepalive: float | None) -> None:
        loop = asyncio.get_running_loop()
        self.channel = channel
        self.keepalive = keepalive
        self.established: asyncio.Future[None] = loop.create_future()
        self.inbox: asyncio.Queue[Union[m.Message, object]] = asyncio.Queue()
        self.closed = loop.create_future()
        self.close_reason: str | None = None
        self.reset = False
        """The server reset the connection (it no longer knows it), rather than closing it."""
        self.transport: asyncio.Transport | None = None
        self.pings: deque[float] = deque()
        """When each of our pings not answered yet went (the loop's clock), oldest first."""
        self._ping_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self.channel.receive_data(data)
            self._flush()
            received = [m.decode(payload) for payload in payloads]
        except RemoteProtocolError as exc:
            self.fail(f"the server broke the protocol: {exc}")
            return
        if self.channel.established and not self.established.done():
            self.established.set_result(None)
            self._arm_ping()
        for message in received:
            if isinstance(message, m.Ping):
                self.send(_PONG)
            else:
                self.inbox.put_nowait(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reset = isinstance(exc, ConnectionResetError)
        if self.close_reason is None:
            self.close_reason = f"connection lost: {exc}" if exc else "closed by the server"
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        if not self.established.done():
            self.established.set_exception(
                CoordHandshakeFailed(f"handshake failed: {self.close_reason}", self.close_reason))
        self.inbox.put_nowait(_CLOSED)
        self.closed.set_result(None)

    def send(self, payload: bytes) -> None:
        if self.close_reason is not None:
            raise CoordLinkClosed(self.close_reason)
        self.channel.send(payload)
        self._flush()

    def fail(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self.transport.abort()

    def _flush(self) -> None:
        data = self.channel.data_to_send()
        if data:
            self.transport.write(data)

    def _arm_ping(self) -> None:
        if self.keepalive is not None:
            self._ping_timer = asyncio.get_running_loop().call_later(self.keepalive, self._ping)

    def _ping(self) -> None:
        if self.close_reason is None:
            self.ping()
            self._arm_ping()

    def ping(self) -> None:
        self.send(_PING)
        self.pings.append(asyncio.get_running_loop().time())


class CoordClient:
    """An established channel to the coordination server."""

    def __init__(self, transport: asyncio.Transport, protocol: _LinkProtocol) -> None:
        self.transport = transport
        self._protocol = protocol

    @property
    def close_reason(self) -> str | None:
        """Why the link closed, or None while it is open."""
        return self._protocol.close_reason

    @property
    def reset(self) -> bool:
        """Whether the server reset the connection (our NAT re-mapped us, or its host restarted)."""
        return self._protocol.reset

    def send(self, message: m.Message) -> None:
        """Seal and send one message; raises CoordLinkClosed once the link is closed."""
        self._protocol.send(m.encode(message))

    def ping(self) -> None:
        """Ping the server now (beside the keepalive's); raises CoordLinkClosed once the link is closed."""
        self._protocol.ping()

    def answered(self) -> Optional[float]:
        """A pong came: when the ping it answers went (the server answers in order); None if none was out."""
        return self._protocol.pings.popleft() if self._protocol.pings else None

    async def recv(self, timeout: float | None = None) -> m.Message:
        """The next message from the server; CoordLinkClosed once the link closed and all was read."""
        item = await asyncio.wait_for(self._protocol.inbox.get(), timeout)
        if item is _CLOSED:
            self._protocol.inbox.put_nowait(_CLOSED)
            raise CoordLinkClosed(self._protocol.close_reason or "closed")
        return item  # type: ignore[return-value]

    def __aiter__(self) -> CoordClient:
        return self

    async def __anext__(self) -> m.Message:
        try:
            return await self.recv()
        except CoordLinkClosed:
            raise StopAsyncIteration from None

    async def register(self, register: m.Register, timeout: float | None = 10.0) -> tuple[m.Registered, m.PeerMap]:
        """Send `register` and wait for the answer; CoordRefused if the server says no (or not yet)."""
        self.send(register)
        return await self.registration(timeout)

    async def registration(self, timeout: float | None = 10.0) -> tuple[m.Registered, m.PeerMap]:
        """Wait for `registered` and `peer_map` (after approval_pending, once an admin approves);
        a map sent in parts comes back whole."""
        registered = await self._expect(m.Registered, timeout)
        assembler = PeerMapAssembler()
        while (peers := assembler.add(await self._expect(m.PeerMap, timeout))) is None:
            pass
        return registered, m.PeerMap(peers)

    async def _expect(self, kind: type, timeout: float | None) -> m.Message:
        message = await self.recv(timeout)
        if isinstance(message, m.Error):
            raise CoordRefused(message.code, message.message)
        if not isinstance(message, kind):
            raise CoordLinkClosed(f"expected {kind.TYPE}, the server sent {message.TYPE}")
        return message

    def close(self) -> None:
        """Close the link (what was sent is flushed first)."""
        if self._protocol.close_reason is None:
            self._protocol.close_reason = "closed by this side"
        self.transport.close()

    def abort(self) -> None:
        """Close the link and its socket now, without flushing or TLS's close_notify exchange (which
        waits up to 30 s for the server's): a connection given up must free its ports at once, or a
        new connect from the same port to the same address fails (EADDRNOTAVAIL)."""
        if self._protocol.close_reason is None:
            self._protocol.close_reason = "closed by this side"
        self.transport.abort()

    async def wait_closed(self) -> None:
        await self._protocol.closed


async def _connect_from(sock: socket.socket, factory, host: str, port: int, tls: ssl.SSLContext | None):
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    return await loop.create_connection(factory, sock=sock, ssl=tls, server_hostname=host if tls else None)


async def connect(
    address: tuple[str, int],
    server_public: bytes,
    local_private: bytes | noise.StaticIdentity,
    *,
    keepalive: float | None = None,
    timeout: float = 10.0,
    local_addr: tuple[str, int] | None = None,
    sock: socket.socket | None = None,
    tls: bool = False,
) -> CoordClient:
    """Open an authenticated channel to the server at `address`, which must hold `server_public`.

    `sock` is an unconnected, non-blocking socket to connect from (the node's TCP punch port);
    it is closed if the connection fails or the call is cancelled. With `tls` the channel runs inside TLS
    (`meshvpn.tlsenvelope`), to the coord's TLS listener.
    """
    loop = asyncio.get_running_loop()
    channel = ClientChannel(local_private, server_public, os.urandom(32), time.time())
    host, port = address

    def factory() -> _LinkProtocol:
        return _LinkProtocol(channel, keepalive)

    try:
        context = tlsenvelope.client_context() if tls else None
        if sock is None:
            opening = loop.create_connection(factory, host, port, local_addr=local_addr, ssl=context)
        else:
            opening = _connect_from(sock, factory, host, port, context)
        transport, protocol = await asyncio.wait_for(opening, timeout)
    except (OSError, asyncio.TimeoutError, asyncio.CancelledError) as exc:
        if sock is not None:
            sock.close()
        if isinstance(exc, asyncio.CancelledError):
            raise
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or f"timed out after {timeout:g}s"
        raise CoordUnreachable(host, port, reason, isinstance(exc, socket.gaierror)) from None
    try:
        await asyncio.wait_for(asyncio.shield(protocol.established), timeout)
    except asyncio.TimeoutError:
        transport.abort()
        raise CoordHandshakeFailed(f"no handshake answer from {host}:{port} within {timeout:g}s",
                                   f"no answer within {timeout:g}s") from None
    except asyncio.CancelledError:  # a race's loser (`meshvpn.node.coordlink`): leave no connection behind
        transport.abort()
        raise
    return CoordClient(transport, protocol)
