"""The asyncio shell of the node's DNS responder (`meshvpn.lan.names`), on its overlay address.

It answers from `directory`, which the node replaces whenever its peer map changes. Names
outside the mesh are refused, or forwarded to one upstream server when `forward_to` is set:
at most `MAX_FORWARDS` at once, each given up after `FORWARD_TIMEOUT`. Garbage is dropped and
counted, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from meshvpn.config import Address
from meshvpn.lan.names import BadQuery, Directory, Forward, respond

log = logging.getLogger(__name__)

MAX_FORWARDS = 64
FORWARD_TIMEOUT = 2.0


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class DnsResponder(asyncio.DatagramProtocol):
    """Answers mesh names; counts what it did in `counters`."""

    def __init__(self, directory: Directory, forward_to: Address | None = None):
        self.directory = directory
        self.forward_to = forward_to
        self.counters: Counter[str] = Counter()
        self.transport: asyncio.DatagramTransport | None = None
        self._forwards: set[asyncio.Task] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            result = respond(data, self.directory, self.forward_to is not None)
        except BadQuery:
            self.counters["malformed"] += 1
            return
        if result is None:
            self.counters["not_a_query"] += 1
        elif isinstance(result, Forward):
            self._forward(result.query, addr)
        else:
            self.counters["answered"] += 1
            self.transport.sendto(result, addr)

    def _forward(self, query: bytes, addr: tuple) -> None:
        if len(self._forwards) >= MAX_FORWARDS:
            self.counters["forward_busy"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._relay(query, addr))
        self._forwards.add(task)
        task.add_done_callback(self._forwards.discard)

    async def _relay(self, query: bytes, addr: tuple) -> None:
        assert self.forward_to is not None
        loop = asyncio.get_running_loop()
        transport, upstream = await loop.create_datagram_endpoint(
            _Upstream, remote_addr=(self.forward_to.host, self.forward_to.port))
        try:
            transport.sendto(query)
            answer = await asyncio.wait_for(upstream.answer, FORWARD_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            self.counters["forward_failed"] += 1
            log.debug("forwarding a DNS query to %s failed: %r", self.forward_to, exc)
            return
        finally:
            transport.close()
        self.counters["forwarded"] += 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)

    def close(self) -> None:
        for task in self._forwards:
            task.cancel()
        if self.transport is not None:
            self.transport.close()


async def serve_dns(host: str, port: int, directory: Directory, forward_to: Address | None = None) -> DnsResponder:
    """Start answering on host:port (the node's overlay address, port 53 by default)."""
    loop = asyncio.get_running_loop()
    _, responder = await loop.create_datagram_endpoint(lambda: DnsResponder(directory, forward_to),
                                                       local_addr=(host, port))
    return responder
