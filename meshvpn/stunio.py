"""asyncio shells for STUN: a UDP Binding server, and a client over any datagram transport.

All protocol decisions are in `meshvpn.stun`; this module only owns sockets, the loop clock,
the transaction ids' randomness and timers. `StunClient` runs over a transport it does not
own, so the node daemon can query STUN servers from its one UDP socket: its protocol passes
every datagram for which `is_stun` is true to `StunClient.datagram_received`.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
from dataclasses import dataclass, field

from meshvpn.dualstack import IPV4_WILDCARD, dual_socket
from meshvpn.ratelimit import SourceLimiter
from meshvpn.stuntcp import StunTcpProtocol

from meshvpn.stun import (
    MAX_RETRANSMITS,
    RTO,
    TRANSACTION_ID_SIZE,
    Address,
    BindingTransaction,
    ChangeRequest,
    StunError,
    StunResult,
    binding_response,
    is_stun,
)


PER_SOURCE_RATE = 20.0
"""Answers a second to one source IP (a NAT of many nodes refreshing now and then stays far below)."""
PER_SOURCE_BURST = 100.0
TOTAL_RATE = 5000.0
"""Answers a second in all, whatever the number of sources."""
TOTAL_BURST = 10000.0


@dataclass
class StunServerStats:
    """Counters shared by a server's primary and alternate sockets."""

    received: int = 0
    """Datagrams received."""
    answered: int = 0
    """Responses (success or error) sent."""
    dropped: int = 0
    """Datagrams left unanswered: not requests, or asking for a source we cannot send from."""
    limiter: SourceLimiter = field(default_factory=lambda: SourceLimiter(
        PER_SOURCE_RATE, PER_SOURCE_BURST, TOTAL_RATE, TOTAL_BURST, 0.0))
    """Answers per source IP and in all: a spoofed flood makes the server reflect little."""

    @property
    def limited(self) -> int:
        """Requests left unanswered by the rate limits."""
        return self.limiter.refused


class StunServerProtocol(asyncio.DatagramProtocol):
    """Answers Binding requests on one socket; `partner` is the server's alternate socket."""

    def __init__(self, stats: StunServerStats | None = None) -> None:
        self.stats = stats or StunServerStats()
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Address | None = None
        self.partner: StunServerProtocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.stats.received += 1
        other = self.partner.local if self.partner else None
        reply = binding_response(data, addr[:2], self.local, other)
        out = self._transport_for(reply.send_from) if reply else None
        if out is None or not self.stats.limiter.allow(addr[0], asyncio.get_running_loop().time()):
            self.stats.dropped += 1
            return
        out.sendto(reply.data, reply.send_to)
        self.stats.answered += 1

    def error_received(self, exc: Exception) -> None:
        """ICMP errors about earlier replies concern nobody here."""

    def _transport_for(self, address: Address | None) -> asyncio.DatagramTransport | None:
        if address is None or address == self.local:
            return self.transport
        if self.partner is not None and address == self.partner.local:
            return self.partner.transport
        return None


@dataclass
class StunServer:
    """A running STUN server: a primary socket and, for RFC 5780, an alternate one."""

    primary: StunServerProtocol
    alternate: StunServerProtocol | None = None
    ipv6: StunServerProtocol | None = None
    """The primary's IPv6 twin, when the primary listens on the IPv4 wildcard and the host has IPv6."""
    tcp: asyncio.AbstractServer | None = None
    """Binding over TCP on the primary's address and port (`meshvpn.stuntcp`), if asked for."""

    @property
    def address(self) -> Address:
        """The primary socket's bound address."""
        return self.primary.local

    @property
    def stats(self) -> StunServerStats:
        """Counters for both sockets."""
        return self.primary.stats

    def close(self) -> None:
        """Close every socket."""
        for protocol in (self.primary, self.alternate, self.ipv6):
            if protocol is not None and protocol.transport is not None:
                protocol.transport.close()
        if self.tcp is not None:
            self.tcp.close()


PICK_ATTEMPTS = 5
"""Tries at port 0 (any port) when the port the kernel picked for UDP is taken for a twin (TCP, IPv6)."""


async def start_stun_server(host: str, port: int, alt: Address | None = None, tcp: bool = False) -> StunServer:
    """Serve STUN on (host, port), and on `alt` too for CHANGE-REQUEST and OTHER-ADDRESS; on the IPv4
    wildcard also on the IPv6 one (same port), for nodes' IPv6 mappings (no CHANGE-REQUEST there);
    with `tcp`, Binding over TCP on the primary's address and port too (nodes' TCP port samples).

    With port 0 the kernel picks the UDP port, and its twins need the same number, which another
    socket may hold: then all of it is closed and picked again."""
    for attempt in range(PICK_ATTEMPTS):
        try:
            return await _start_stun_server(host, port, alt, tcp)
        except OSError as exc:
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == PICK_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _start_stun_server(host: str, port: int, alt: Address | None, tcp: bool) -> StunServer:
    loop = asyncio.get_running_loop()
    stats = StunServerStats()
    _, primary = await loop.create_datagram_endpoint(
        lambda: StunServerProtocol(stats), local_addr=(host, port)
    )
    server = StunServer(primary)
    try:
        twin = dual_socket(primary.local[1], v6_only=True) if host == IPV4_WILDCARD else None
        if twin is not None:
            _, server.ipv6 = await loop.create_datagram_endpoint(lambda: StunServerProtocol(stats), sock=twin)
        if alt is not None:
            _, server.alternate = await loop.create_datagram_endpoint(
                lambda: StunServerProtocol(stats), local_addr=alt
            )
            primary.partner, server.alternate.partner = server.alternate, primary
        if tcp:
            server.tcp = await loop.create_server(lambda: StunTcpProtocol(stats), host, primary.local[1],
                                                  reuse_address=True)
    except OSError:
        server.close()
        raise
    return server


class _Query:
    """One transaction in flight: where it goes, its timer and who waits for it."""

    __slots__ = ("transaction", "server", "future", "timer")

    def __init__(self, transaction: BindingTransaction, server: Address, future: asyncio.Future) -> None:
        self.transaction = transaction
        self.server = server
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


class StunClient:
    """Binding queries over a datagram transport that may also carry other traffic."""

    def __init__(
        self,
        transport: asyncio.DatagramTransport,
        *,
        rto: float = RTO,
        max_retransmits: int = MAX_RETRANSMITS,
    ) -> None:
        self._transport = transport
        self._rto = rto
        self._max_retransmits = max_retransmits
        self._queries: dict[bytes, _Query] = {}

    async def query(self, server: Address, *, change: ChangeRequest | None = None) -> StunResult:
        """Ask `server` for our mapped address; raise TimeoutError or StunError on failure."""
        loop = asyncio.get_running_loop()
        txid = os.urandom(TRANSACTION_ID_SIZE)
        transaction = BindingTransaction(txid, loop.time(), self._rto, self._max_retransmits, change=change)
        query = _Query(transaction, server, loop.create_future())
        self._queries[txid] = query
        try:
            self._transport.sendto(transaction.request(), server)
            self._arm(query)
            return await query.future
        finally:
            del self._queries[txid]
            if query.timer is not None:
                query.timer.cancel()

    def datagram_received(self, data: bytes, addr: tuple) -> bool:
        """Feed a received datagram; True when it answered one of our queries."""
        query = self._queries.get(bytes(data[8:20]))
        if query is None or query.future.done():
            return False
        query.transaction.receive(data, asyncio.get_running_loop().time())
        self._settle(query)
        return query.future.done()

    def _arm(self, query: _Query) -> None:
        deadline = query.transaction.get_timer()
        if deadline is not None:
            query.timer = asyncio.get_running_loop().call_at(deadline, self._on_timer, query)

    def _on_timer(self, query: _Query) -> None:
        if query.future.done():
            return
        retransmit = query.transaction.handle_timer(asyncio.get_running_loop().time())
        if retransmit is not None:
            self._transport.sendto(retransmit, query.server)
        self._settle(query)
        self._arm(query)

    @staticmethod
    def _settle(query: _Query) -> None:
        transaction = query.transaction
        if transaction.result is not None:
            query.future.set_result(transaction.result)
        elif transaction.timed_out:
            query.future.set_exception(TimeoutError(f"STUN {query.server}: {transaction.failure}"))
        elif transaction.failure is not None:
            query.future.set_exception(StunError(f"STUN {query.server}: {transaction.failure}"))


class _StunClientProtocol(asyncio.DatagramProtocol):
    """A socket of its own for `stun_binding`: STUN datagrams go to the client, others are dropped."""

    def __init__(self) -> None:
        self.client: StunClient | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = StunClient(transport)  # type: ignore[arg-type]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if is_stun(data):
            self.client.datagram_received(data, addr)


async def stun_binding(
    server: Address,
    *,
    local: Address | None = None,
    sock=None,
    timeout: float = 3.0,
    change: ChangeRequest | None = None,
) -> StunResult:
    """One Binding query from a fresh socket (or `sock`, which is closed afterwards).

    `local` defaults to the wildcard address of the server's family, any port.
    """
    loop = asyncio.get_running_loop()
    if sock is None and local is None:
        local = ("::", 0) if ipaddress.ip_address(server[0]).version == 6 else ("0.0.0.0", 0)
    transport, protocol = await loop.create_datagram_endpoint(
        _StunClientProtocol, local_addr=None if sock is not None else local, sock=sock
    )
    try:
        return await asyncio.wait_for(protocol.client.query(server, change=change), timeout)
    finally:
        transport.close()
