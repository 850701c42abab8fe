"""One node's TCP connection to the coord: channel bytes in, frames to the core, frames out.

Each connection runs a `ServerChannel` (Noise IK, sealed frames). What it costs the server is
bounded: a handshake deadline, a cap on what may queue for a client that does not read, and a
close on the first bad byte. While its peer map waits for room (`mapbudget`), everything else
the core sends it but pongs is held and follows the map, so the node sees `registered`, its
map, then the rest, in the order the core decided them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

from meshvpn import keys
from meshvpn.channel import ServerChannel
from meshvpn.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from meshvpn.coord.server import CoordServer

log = logging.getLogger("meshvpn.coord.server")


class Connection(asyncio.Protocol):
    """One node's TCP connection: channel bytes in, frames to the core, the core's frames out."""

    def __init__(self, server: "CoordServer") -> None:
        self.server = server
        self.channel = ServerChannel(server.identity, _anyone, os.urandom(32))
        self.transport: asyncio.Transport | None = None
        self.host = ""
        self.port = 0
        self.address = "?"
        self.node_key: bytes | None = None
        """Set once the channel is established and the core has been told about the node."""
        self.unregistered = False
        """Whether the connection counts against the caps of unregistered connections."""
        self.peer_map_bytes = 0
        """Bytes of peer map sent, which may sit in the queue on top of `max_write_buffer`."""
        self.held: list[bytes] | None = None
        """While the peer map waits for room: what the core sent meanwhile, to follow the map."""
        self.mapped = False
        """Whether its peer map went out: only then does the fan-out serve it."""
        self.paused = False
        """Whether the transport's write buffer is above its high-water mark."""
        self._handshake_timer: asyncio.TimerHandle | None = None

    def who(self) -> str:
        key = self.channel.remote_public
        return self.address if key is None else f"{self.address} key {keys.encode_key(key)[:8]}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.host = peer[0]
        self.port = peer[1]
        self.address = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        refused = self.server.admit(self)
        if refused is not None:
            log.warning("refusing %s: %s", self.address, refused)
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if self.server.limits.socket_send_buffer is not None and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.server.limits.socket_send_buffer)
        self._handshake_timer = asyncio.get_running_loop().call_later(
            self.server.limits.handshake_timeout, self._handshake_expired
        )

    def data_received(self, data: bytes) -> None:
        self.server.batch()
        try:
            self._receive(data)
        except Exception:
            log.exception("internal error on the connection of %s", self.who())
            self.drop("internal error")

    def _receive(self, data: bytes) -> None:
        try:
            payloads = self.channel.receive_data(data)
        except RemoteProtocolError as exc:
            self.drop(f"channel error: {exc}")
            return
        self._flush()
        membership = self.server.membership
        now = self.server.clock()
        if self.node_key is None:
            if not self.channel.established:
                return
            self._handshake_timer.cancel()
            self.node_key = self.channel.remote_public
            membership.node_connected(self, self.node_key, self.host, now, observed_port=self.port)
        for payload in payloads:
            membership.receive(self, payload, now)
        if self.unregistered and membership.registered(self):
            self.server.registered(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.server.release(self)
        self.server.backlog.resumed(self)
        if self.node_key is not None and not self.server.stopping:
            log.debug("connection of %s ended%s", self.who(), f": {exc}" if exc else "")
            self.server.batch()  # thousands of nodes may go at once: one commit for a loop turn's
            self.server.membership.node_disconnected(self, self.server.clock())

    def send_payload(self, payload: bytes, *, peer_map: bool = False, stateless: bool = False) -> None:
        """Seal one encoded message to this node, or hold it behind the waiting peer map unless
        it says nothing about the network (a `pong`: a node waiting minutes for its map must not
        take the coord for silent); drop the node if it stopped reading."""
        if self.transport.is_closing():
            return
        if self.held is not None and not peer_map and not stateless:
            self.held.append(payload)
            return
        if peer_map:
            self.peer_map_bytes += len(payload)
        self.write_sealed(self.seal((payload,)))

    def takes_round(self, frames: list[bytes]) -> bool:
        """Whether a fan-out round's `frames` go out now: not to a closing connection, and
        behind a peer map still waiting they are held (as `send_payload` would)."""
        if self.transport.is_closing():
            return False
        if self.held is not None:
            self.held.extend(frames)
            return False
        return True

    def seal(self, payloads) -> str | None:
        """Seal `payloads` into the channel's outbox; why the connection must go, if it must.
        Touches nothing but the channel, so `sealer` may call it on another thread."""
        try:
            for payload in payloads:
                self.channel.send(payload)
        except LocalProtocolError as exc:
            return f"cannot send: {exc}"
        return None

    def write_sealed(self, problem: str | None) -> None:
        """Write what `seal` sealed, or drop the connection for its `problem`; drop a node that
        stopped reading."""
        if problem is not None:
            self.drop(problem)
            return
        self._flush()
        queued = self.transport.get_write_buffer_size()
        if queued > self.server.limits.max_write_buffer + self.peer_map_bytes:
            self.drop(f"not reading: {queued} bytes queued", abort=True)

    def release_held(self) -> None:
        """The peer map went out (or never will): send what waited behind it."""
        held, self.held = self.held, None
        for payload in held or ():
            self.send_payload(payload)

    def pause_writing(self) -> None:
        self.paused = True
        self.server.backlog.paused(self, self.server.clock())

    def resume_writing(self) -> None:
        self.paused = False
        self.server.backlog.resumed(self)
        self.server.drained(self)

    def close_by_core(self, reason: str) -> None:
        """The core ended the connection (it already forgot it): flush what was sent, then close."""
        log.info("closing %s: %s", self.who(), reason)
        self.release_held()
        self.node_key = None
        self.transport.close()

    def drop(self, reason: str, *, abort: bool = False) -> None:
        """The shell ends the connection; the core hears of it at once, so it stops sending."""
        if self.transport.is_closing():
            return
        log.warning("dropping %s: %s", self.who(), reason)
        if self.node_key is not None:
            self.server.membership.node_disconnected(self, self.server.clock())
            self.node_key = None
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def _handshake_expired(self) -> None:
        self.drop(f"no channel handshake within {self.server.limits.handshake_timeout:g}s", abort=True)

    def _flush(self) -> None:
        data = self.channel.data_to_send()
        if data:
            self.transport.write(data)


def _anyone(_node_key: bytes) -> bool:
    """Every key may open a channel: the membership core decides who may register."""
    return True
