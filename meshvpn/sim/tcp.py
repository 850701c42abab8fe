"""TCP on the simulated network: segments as messages, and each host's connections.

No byte-level TCP: a `Segment` is an object with flags, a sequence number, an acknowledgement and
its payload, routed through realms and NATs exactly as a UDP `Datagram` (`proto` tells them apart).
What hole punching and relay fallback depend on is modelled as the kernel does it:

* the three-way handshake, and the simultaneous open where both SYNs cross (each side answers the
  other's SYN with a SYN-ACK of its own SYN, and each is connected when that SYN-ACK arrives);
* SYN retransmission at 1 s, then doubling (Linux's initial RTO), until the caller gives up or
  `SYN_RETRIES` run out;
* a SYN to a port nobody listens on, or a segment of no connection, answered with RST; a RST
  ends the connection it names (``closed("reset")``, or ``"refused"`` while connecting); a SYN
  that meets an established connection of the same ports (its peer forgot it) is answered with
  an ACK, which the connecting side answers with RST, so its next SYN opens anew;
* ports shared as ``SO_REUSEADDR`` + ``SO_REUSEPORT`` allow: a listener, and connections from the
  same local port to different remotes; a connect to a remote the port already has a connection
  with fails at once ("address in use");
* reliable, ordered delivery over lossy, reordering links: every payload is retransmitted
  (go-back-N, all unacknowledged segments) after `RTO_MIN`, doubling up to `RTO_MAX`, until it is
  acknowledged or `DATA_RETRIES` timeouts in a row end the connection (``closed("timed out")``);
  out-of-order segments wait for the gap to fill. No congestion or flow control: one write is one
  segment.
* ``close()`` sends FIN after the data, and the peer sees ``closed("eof")`` once everything before
  it arrived; ``abort()`` sends RST and forgets the connection at once (linger 0).

Applications see a connection through a `StreamHandler`'s three calls.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Protocol

from meshvpn.sim.clock import TimerHandle
from meshvpn.sim.network import EPHEMERAL_PORTS, Endpoint, Host

SYN_RTO = 1.0
"""Seconds before the first SYN is sent again (Linux's initial RTO), doubling each time."""
SYN_RETRIES = 6
"""SYN retransmissions before a connect gives up (Linux's ``tcp_syn_retries``)."""
RTO_MIN = 0.2
"""Seconds before unacknowledged data is sent again (Linux's floor), doubling each time."""
RTO_MAX = 60.0
"""Longest wait between retransmissions."""
WINDOW = 1 << 20
"""Receive window: a RST is believed only with a sequence number inside it."""
DATA_RETRIES = 15
"""Retransmission timeouts in a row before an established connection is given up (``tcp_retries2``)."""


class Flags(enum.Flag):
    """The TCP flags the model carries."""

    NONE = 0
    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment in flight, addressed as on the wire it is currently on."""

    proto: ClassVar[str] = "tcp"
    src: Endpoint
    dst: Endpoint
    flags: Flags
    seq: int = 0
    """Sequence number of the SYN, the FIN or the first payload byte."""
    ack: int = 0
    """The next sequence number expected from the other side (with `Flags.ACK`)."""
    data: bytes = b""


class StreamHandler(Protocol):
    """What an application gives a connection: told when it opens, of each payload and of its end."""

    def connected(self, conn: TcpConn) -> None: ...

    def received(self, conn: TcpConn, data: bytes) -> None: ...

    def closed(self, conn: TcpConn, reason: str) -> None: ...


class State(enum.Enum):
    """Where one connection stands (TIME_WAIT is not modelled: meshvpn's sockets linger 0)."""

    SYN_SENT = "syn-sent"
    SYN_RECEIVED = "syn-received"
    ESTABLISHED = "established"
    CLOSING = "closing"
    """We sent FIN; the connection is kept until the peer's FIN or a timeout."""
    CLOSED = "closed"


Acceptor = Callable[["TcpConn"], Optional[StreamHandler]]
"""A listener's choice for a connection that completed its handshake: a handler, or None to reset it."""


class TcpStack:
    """The TCP of one simulated host: its listeners and connections, by local port and remote."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.scheduler = host.network.scheduler
        self.conns: dict[tuple[int, Endpoint], TcpConn] = {}
        self.listeners: dict[int, Acceptor] = {}
        self._next_port = EPHEMERAL_PORTS[0]
        self._next_isn = 1000
        host.tcp = self

    def listen(self, port: int, accept: Acceptor) -> None:
        """Take connections to `port`; `accept` names each one's handler once it is established."""
        self.listeners[port] = accept

    def unlisten(self, port: int) -> None:
        self.listeners.pop(port, None)

    def connect(self, local_port: int, remote: Endpoint, handler: StreamHandler) -> TcpConn:
        """Open a connection from `local_port` (0: an ephemeral port) to `remote`: a SYN goes out."""
        port = local_port or self._free_port()
        conn = TcpConn(self, port, tuple(remote), handler, State.SYN_SENT, self._isn())
        if (port, conn.remote) in self.conns:
            conn.state = State.CLOSED
            self.scheduler.call_later(0.0, handler.closed, conn, "address in use")
            return conn
        self.conns[(port, conn.remote)] = conn
        conn.send_syn()
        return conn

    def close_all(self, reason: str) -> None:
        """The host lost its address: every connection ends without a word to the peer."""
        for conn in list(self.conns.values()):
            conn.drop(reason)

    def receive(self, seg: Segment) -> None:
        """A segment reached the host."""
        conn = self.conns.get((seg.dst[1], seg.src))
        if conn is not None:
            conn.segment(seg)
        elif Flags.RST in seg.flags:
            return
        elif seg.flags == Flags.SYN and seg.dst[1] in self.listeners:
            conn = TcpConn(self, seg.dst[1], seg.src, None, State.SYN_RECEIVED, self._isn())
            conn.rcv_nxt = seg.seq + 1
            self.conns[(conn.port, conn.remote)] = conn
            conn.send_syn()
        else:
            self.host.network.drops["tcp reset"] += 1
            seq = seg.ack if Flags.ACK in seg.flags else 0
            length = len(seg.data) + (Flags.SYN in seg.flags) + (Flags.FIN in seg.flags)
            self.send(Segment(seg.dst, seg.src, Flags.RST | Flags.ACK, seq, seg.seq + length))

    def send(self, seg: Segment) -> None:
        self.host.send(seg)

    def _isn(self) -> int:
        self._next_isn += 100_000
        return self._next_isn

    def _free_port(self) -> int:
        low, high = EPHEMERAL_PORTS
        used = {port for port, _ in self.conns} | set(self.listeners)
        for _ in range(high - low + 1):
            port, self._next_port = self._next_port, low if self._next_port == high else self._next_port + 1
            if port not in used:
                return port
        raise ValueError(f"no free TCP port on {self.host.ip}")


class TcpConn:
    """One connection: its handshake, its retransmission queue and its in-order receive side."""

    def __init__(self, stack: TcpStack, port: int, remote: Endpoint, handler: Optional[StreamHandler],
                 state: State, isn: int) -> None:
        self.stack, self.port, self.remote, self.handler, self.state = stack, port, remote, handler, state
        self.isn = isn
        self.snd_nxt = isn + 1
        self.rcv_nxt = 0
        self.unacked: list[Segment] = []
        self.early: dict[int, Segment] = {}
        """Segments that arrived ahead of `rcv_nxt`, by sequence number."""
        self._timer: Optional[TimerHandle] = None
        self._rto = SYN_RTO
        self._tries = 0

    @property
    def local(self) -> Endpoint:
        return (self.stack.host.ip, self.port)

    @property
    def open(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def retransmitting(self) -> bool:
        """Data waits for a retransmission timeout that already fired (backed off), as the kernel's
        TCP_INFO says (`meshvpn.node.tcpinfo`)."""
        return self.state is State.ESTABLISHED and bool(self.unacked) and self._tries > 0

    # ---- the application's calls

    def write(self, data: bytes) -> None:
        """Queue `data` as one segment (dropped unless established and not closing)."""
        if self.state is not State.ESTABLISHED or not data:
            return
        self._queue(Segment(self.local, self.remote, Flags.ACK, self.snd_nxt, self.rcv_nxt, bytes(data)))
        self.snd_nxt += len(data)

    def close(self) -> None:
        """Send FIN after the queued data; the connection ends when the peer's FIN comes back."""
        if self.state is State.ESTABLISHED:
            self._queue(Segment(self.local, self.remote, Flags.FIN | Flags.ACK, self.snd_nxt, self.rcv_nxt))
            self.snd_nxt += 1
            self.state = State.CLOSING
        elif self.state is not State.CLOSING:
            self.abort()

    def abort(self) -> None:
        """Send RST and forget the connection (no callback)."""
        if self.state is State.CLOSED:
            return
        self.stack.send(Segment(self.local, self.remote, Flags.RST | Flags.ACK, self.snd_nxt, self.rcv_nxt))
        self._forget()

    def drop(self, reason: str) -> None:
        """End the connection here without a segment, and tell the handler."""
        if self.state is not State.CLOSED:
            self._forget()
            if self.handler is not None:
                self.handler.closed(self, reason)

    # ---- segments

    def send_syn(self) -> None:
        flags = Flags.SYN if self.state is State.SYN_SENT else Flags.SYN | Flags.ACK
        self.stack.send(Segment(self.local, self.remote, flags, self.isn, self.rcv_nxt))
        self._arm(self._rto)

    def segment(self, seg: Segment) -> None:
        """A segment of this connection arrived."""
        if Flags.RST in seg.flags:
            if self._acceptable_reset(seg):
                self.drop("refused" if self.state is State.SYN_SENT else "reset")
        elif Flags.SYN in seg.flags:
            self._syn(seg)
        elif self.state is State.SYN_SENT:
            if Flags.ACK in seg.flags and seg.ack != self.isn + 1:  # an old connection's ACK (RFC 793)
                self.stack.send(Segment(self.local, self.remote, Flags.RST, seg.ack))
        elif self.state is State.SYN_RECEIVED:
            if Flags.ACK in seg.flags and seg.ack == self.isn + 1:
                self._established()
                self._data(seg)
        elif self.state in (State.ESTABLISHED, State.CLOSING):
            self._data(seg)

    def _acceptable_reset(self, seg: Segment) -> bool:
        """RFC 793's check, so a late RST of an earlier connection on the same ports is ignored."""
        if self.state is State.SYN_SENT:
            return Flags.ACK in seg.flags and seg.ack == self.isn + 1
        return self.rcv_nxt <= seg.seq < self.rcv_nxt + WINDOW

    def _syn(self, seg: Segment) -> None:
        if self.state is State.SYN_SENT:
            self.rcv_nxt = seg.seq + 1
            if Flags.ACK in seg.flags and seg.ack == self.isn + 1:
                self._ack_only()
                self._established()
            else:
                self.state = State.SYN_RECEIVED  # simultaneous open: our SYN-ACK answers theirs
                self.send_syn()
        elif self.state is State.SYN_RECEIVED:
            if Flags.ACK in seg.flags and seg.ack == self.isn + 1:
                self._ack_only()
                self._established()
            else:
                self.send_syn()
        else:
            self._ack_only()  # our ACK of their SYN-ACK was lost

    def _established(self) -> None:
        self._cancel()
        self._rto, self._tries = RTO_MIN, 0
        self.state = State.ESTABLISHED
        if self.handler is None:
            accept = self.stack.listeners.get(self.port)
            self.handler = None if accept is None else accept(self)
            if self.handler is None:
                self.abort()
                return
        self.handler.connected(self)

    def _data(self, seg: Segment) -> None:
        if Flags.ACK in seg.flags:
            self._acked(seg.ack)
        if not seg.data and Flags.FIN not in seg.flags:
            return
        if seg.seq > self.rcv_nxt:
            self.early[seg.seq] = seg
        while seg is not None and seg.seq == self.rcv_nxt and self.state is not State.CLOSED:
            self.rcv_nxt += len(seg.data) + (Flags.FIN in seg.flags)
            if seg.data and self.handler is not None:
                self.handler.received(self, seg.data)
            if Flags.FIN in seg.flags and self.state is not State.CLOSED:
                self._answer_fin()
                return
            seg = self.early.pop(self.rcv_nxt, None)
        if self.state is not State.CLOSED:
            self._ack_only()

    def _acked(self, ack: int) -> None:
        before = len(self.unacked)
        self.unacked = [s for s in self.unacked if s.seq + len(s.data) + (Flags.FIN in s.flags) > ack]
        if len(self.unacked) < before:
            self._rto, self._tries = RTO_MIN, 0
            self._cancel()
            if self.unacked:
                self._arm(self._rto)

    def _answer_fin(self) -> None:
        """The peer closed: acknowledge, close our side too (as asyncio does on EOF) and end."""
        flags = Flags.ACK if self.state is State.CLOSING else Flags.FIN | Flags.ACK
        self.stack.send(Segment(self.local, self.remote, flags, self.snd_nxt, self.rcv_nxt))
        self.drop("eof")

    def _ack_only(self) -> None:
        self.stack.send(Segment(self.local, self.remote, Flags.ACK, self.snd_nxt, self.rcv_nxt))

    def _queue(self, seg: Segment) -> None:
        self.unacked.append(seg)
        self.stack.send(seg)
        if self._timer is None:
            self._arm(self._rto)

    def _arm(self, delay: float) -> None:
        self._cancel()
        self._timer = self.stack.scheduler.call_later(delay, self._timeout)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timeout(self) -> None:
        self._timer = None
        self._tries += 1
        self._rto = min(2 * self._rto, RTO_MAX)
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED):
            if self._tries > SYN_RETRIES:
                self.drop("timed out")
            else:
                self.send_syn()
        elif self.unacked:
            if self._tries > DATA_RETRIES:
                self.drop("timed out")
                return
            for seg in self.unacked:
                self.stack.send(seg)
            self._arm(self._rto)

    def _forget(self) -> None:
        self._cancel()
        self.state = State.CLOSED
        if self.stack.conns.get((self.port, self.remote)) is self:
            del self.stack.conns[(self.port, self.remote)]
