"""STUN Binding over TCP (RFC 8489 §6.2.2): the coord's answer on TCP, and a node's TCP port sample.

A node behind a sequential NAT predicts its NAT's next TCP mapping from the port the newest one
got (``docs/nat-traversal.md``, "TCP port prediction"). Only a new TCP connection shows that
port, so the coord answers Binding requests on its STUN port over TCP as well as UDP. Over TCP
a message is framed by its header's length field; a node sends one request per connection,
and the server closes the connection once it has answered (or on anything else).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from typing import Any, Optional

from meshvpn.stun import Address, BindingTransaction, StunError, binding_response
from meshvpn.stun_codec import HEADER, TRANSACTION_ID_SIZE

MAX_MESSAGE = 1024
"""Largest request the server reads (a Binding request with PADDING is 548 bytes)."""
IDLE = 5.0
"""Seconds a server connection may stay without a whole request."""
_LINGER_RST = struct.pack("ii", 1, 0)


def message_size(buf: bytes) -> Optional[int]:
    """The size of the STUN message `buf` starts with, once its header is in; None before."""
    if len(buf) < HEADER.size:
        return None
    return HEADER.size + int.from_bytes(buf[2:4], "big")


class StunTcpProtocol(asyncio.Protocol):
    """One TCP connection to the STUN server: one Binding request, one answer, then closed.

    `stats` is the server's `meshvpn.stunio.StunServerStats` (counters and the per-source
    limiter), shared with its UDP sockets."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats
        self.transport: Optional[asyncio.Transport] = None
        self._buf = b""
        self._idle: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._idle = asyncio.get_running_loop().call_later(IDLE, transport.abort)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        size = message_size(self._buf)
        if size is None or (len(self._buf) < size and size <= MAX_MESSAGE):
            return
        self.stats.received += 1
        source = self.transport.get_extra_info("peername")[:2]
        local = self.transport.get_extra_info("sockname")[:2]
        reply = binding_response(self._buf[:size], source, local) if size <= MAX_MESSAGE else None
        loop = asyncio.get_running_loop()
        if reply is None or reply.send_from is not None or reply.send_to != source \
                or not self.stats.limiter.allow(source[0], loop.time()):
            self.stats.dropped += 1
            self.transport.abort()
            return
        self.transport.write(reply.data)
        self.stats.answered += 1
        self.transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._idle is not None:
            self._idle.cancel()


async def tcp_binding(server: Address, local: Address, timeout: float) -> Address:
    """Our address and port as `server` sees a new TCP connection from `local` (port 0: any).

    Raises OSError, TimeoutError or StunError. The socket is reset when done (it lingers 0 s),
    so a sample leaves no TIME_WAIT behind."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ipaddress.ip_address(server[0]).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        sock.setblocking(False)
        sock.bind(local)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, server)
            transaction = BindingTransaction(os.urandom(TRANSACTION_ID_SIZE), loop.time(), max_retransmits=0)
            await loop.sock_sendall(sock, transaction.request())
            buf = b""
            while (size := message_size(buf)) is None or len(buf) < size:
                chunk = await loop.sock_recv(sock, MAX_MESSAGE)
                if not chunk or len(buf) > MAX_MESSAGE:
                    raise StunError(f"STUN over TCP {server}: no whole answer")
                buf += chunk
            if transaction.receive(buf[:size], loop.time()) is None:
                raise StunError(f"STUN over TCP {server}: {transaction.failure or 'not our answer'}")
            return transaction.result.mapped
