"""STUN over TCP in the simulated network: the coord's TCP port samples (`meshvpn.stuntcp`'s role).

The daemon's coord answers a Binding request on its STUN port's TCP twin, and a node behind an
endpoint-dependent NAT takes a TCP port sample there (``TcpSampleWanted``) from a new local port,
whose mapped port is its NAT's newest TCP mapping (`meshvpn.node.tcp.prediction`). Here, as for
the sim's UDP STUN, the answer is the source endpoint as text, not a STUN message: what is tested
is the NATs' mapping, and the node's prediction from it.
"""

from __future__ import annotations

from typing import Any, Optional

from meshvpn.sim.network import Host
from meshvpn.sim.tcp import TcpConn, TcpStack
from meshvpn.wire import Endpoint

SAMPLE_TIMEOUT = 1.0
"""Seconds a TCP port sample waits for its answer (the daemon's ``tcp.shell.SAMPLE_TIMEOUT``)."""


class _Answer:
    """The server's end of one sample connection: says where it came from, then closes."""

    def connected(self, conn: TcpConn) -> None:
        conn.write(("%s:%d" % conn.remote).encode())
        conn.close()

    def received(self, conn: TcpConn, data: bytes) -> None:
        pass

    def closed(self, conn: TcpConn, reason: str) -> None:
        pass


def serve(host: Host, port: int) -> TcpStack:
    """Answer TCP samples on `host`'s `port` (the STUN server's UDP port number, as the coord does)."""
    stack = TcpStack(host)
    stack.listen(port, lambda conn: _Answer())
    return stack


class TcpSample:
    """One TCP port sample of a simulated node, for the peer `peer_key`: the node hears
    ``tcp_sampled`` once, with the mapped endpoint or None (refused, or no answer in time)."""

    def __init__(self, owner: Any, stack: TcpStack, server: Endpoint, peer_key: bytes) -> None:
        self.owner, self.peer_key = owner, peer_key
        self.done = False
        self.timer = owner.world.net.scheduler.call_later(SAMPLE_TIMEOUT, self._report, None)
        self.conn = stack.connect(0, tuple(server), self)

    def connected(self, conn: TcpConn) -> None:
        pass

    def received(self, conn: TcpConn, data: bytes) -> None:
        host, port = data.decode().rsplit(":", 1)
        self._report(Endpoint(host, int(port)))

    def closed(self, conn: TcpConn, reason: str) -> None:
        self._report(None)

    def _report(self, sample: Optional[Endpoint]) -> None:
        if self.done:
            return
        self.done = True
        self.timer.cancel()
        self.conn.abort()
        self.owner.node.tcp_sampled(self.peer_key, sample, self.owner.now)
        self.owner.pump()
