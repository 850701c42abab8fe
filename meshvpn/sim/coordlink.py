"""A simulated node's control channel to the fake coord, over the simulated network's TCP.

The daemon's coord link (`meshvpn.node.coordlink`) is a TCP connection from the node's punch
port; so is this one (`meshvpn.sim.tcp`), through the site's NATs, so whatever cuts the real
connection cuts it too: a NAT that forgot its mappings answers the next segment with the coord's
RST, a node that moved has lost its address, a dead coord resets its connections and refuses new
ones. Messages are the control schema's, encoded as on the wire, one length-prefixed frame each
(the channel's encryption left out: it changes no timing).

The waits are the daemon's own rules, through its sans-IO pieces: the `Dialer` decides the
backoff (reset by any sign of the coord, the first step after a registered link dropped, none
after a network change or when the coord reset the connection), a punch request that found the
link down waits for the registration (`meshvpn.node.coordbacklog`), the link pings every
`KEEPALIVE` seconds and is dead after `silence_limit` without a frame, a connection that has
not registered within `CONNECT_TIMEOUT` is given up, and when the network comes back under the
connection the link checks it carries (`meshvpn.node.tcpresume`: reconnect at once if TCP waits
for a backed-off retransmission, else a ping with a short deadline). The jitter comes from the
test's random source.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING, Callable, Optional

from meshvpn.control import messages as m
from meshvpn.errors import RemoteProtocolError
from meshvpn.node.coordbacklog import PunchBacklog
from meshvpn.node.coorddial import CONNECT_TIMEOUT, KEEPALIVE, Dialer, silence_limit
from meshvpn.node.tcpresume import TcpResume, Ping, Reconnect
from meshvpn.sim.clock import Scheduler, TimerHandle
from meshvpn.sim.tcp import TcpConn
from meshvpn.wire import Endpoint

if TYPE_CHECKING:
    from meshvpn.sim.pairs import Node

COORD_AT = Endpoint("203.0.113.100", 443)
"""Where the fake coord listens (its control channel, TCP)."""
_LENGTH = struct.Struct("!I")


def frame(msg: m.Message) -> bytes:
    """One message as it goes on the connection: its length, then its encoding."""
    payload = m.encode(msg)
    return _LENGTH.pack(len(payload)) + payload


class Frames:
    """The messages in a byte stream, however its segments cut it."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[m.Message]:
        """The messages `data` completes; a frame that does not decode is skipped."""
        self._buffer += data
        out = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if len(self._buffer) < _LENGTH.size + length:
                break
            payload = self._buffer[_LENGTH.size:_LENGTH.size + length]
            self._buffer = self._buffer[_LENGTH.size + length:]
            try:
                out.append(m.decode(payload))
            except RemoteProtocolError:
                continue
        return out


class CoordLink:
    """One node's connection to the coord: dialling, registered, or waiting out the dialer's backoff."""

    def __init__(self, node: Node, scheduler: Scheduler, jitter: Callable[[], float],
                 keepalive: float = KEEPALIVE) -> None:
        self.node, self.scheduler, self.jitter, self.keepalive = node, scheduler, jitter, keepalive
        self.dialer = Dialer()
        self.backlog = PunchBacklog()
        self.up = False
        """Registered: frames flow both ways."""
        self.registrations: list[float] = []
        """When each registration arrived at the node."""
        self.drops: list[tuple[float, str]] = []
        """When a registered connection ended, and why."""
        self.resume = TcpResume()
        self.resumes: list[tuple[float, str]] = []
        """When the check after the network's return reconnected, and why."""
        self._pings: deque[float] = deque()
        """When each ping not answered yet went, oldest first."""
        self._check: Optional[TimerHandle] = None
        self.conn: Optional[TcpConn] = None
        self._frames = Frames()
        self._heard = 0.0
        self._round: Optional[TimerHandle] = None
        self._ping: Optional[TimerHandle] = None
        self._silence: Optional[TimerHandle] = None

    @property
    def local_address(self) -> Optional[str]:
        """Our address on an established connection (which the netlink rules look for among the
        vanished ones); None while there is none, as the daemon's link says while it dials."""
        return self.conn.local[0] if self.conn is not None and self.conn.open else None

    @property
    def registered_at(self) -> Optional[float]:
        """When the current connection registered; None while there is none."""
        return self.registrations[-1] if self.up else None

    def start(self) -> None:
        self._next_round(0.0)

    def reconnect_now(self) -> None:
        """The host's network changed under the connection: a new round at once, without backoff
        (`CoordLink.reconnect` in the daemon)."""
        self._end()
        self.dialer.failures = 0
        self._next_round(0.0)

    def network_back(self) -> None:
        """The network is usable again under the connection (`NetworkChanged.resumed`): check it
        carries (`CoordLink.network_back` in the daemon)."""
        if self.up and self.conn is not None:
            self.resume.resumed(self.scheduler.now, self.conn.retransmitting)
            self._follow_resume()

    def send(self, msg: m.Message) -> bool:
        """Send if registered; False otherwise, as the daemon's link does (a punch request waits in
        the backlog for the registration)."""
        if not self.up or self.conn is None:
            self.backlog.hold(msg, self.scheduler.now)
            return False
        self.conn.write(frame(msg))
        return True

    # ---- the connection's handler

    def connected(self, conn: TcpConn) -> None:
        conn.write(frame(m.Register(self.node.name, "sim", (), tcp_punch=True)))

    def received(self, conn: TcpConn, data: bytes) -> None:
        if conn is not self.conn:
            return
        self._heard = self.scheduler.now
        for msg in self._frames.feed(data):
            if conn is not self.conn:
                return
            if isinstance(msg, m.Ping):
                conn.write(frame(m.Pong()))
            elif isinstance(msg, m.Pong):
                self.resume.answered(self.scheduler.now, self._pings.popleft() if self._pings else None)
                self._follow_resume()
            else:
                self._message(msg)

    def closed(self, conn: TcpConn, reason: str) -> None:
        if conn is self.conn:
            self._lost(reason)

    # ---- rules

    def _next_round(self, delay: float) -> None:
        if self._round is not None:
            self._round.cancel()
        self._round = self.scheduler.call_later(delay, self._dial)

    def _dial(self) -> None:
        """A round over the coord's one address: connect from the punch port."""
        self._round = None
        self.dialer.plan([[COORD_AT]])
        endpoint = self.dialer.next_endpoint()
        self._frames = Frames()
        self.conn = self.node.tcp.connect(self.node.port, endpoint, self)
        self._heard = self.scheduler.now
        self._silence = self.scheduler.call_later(CONNECT_TIMEOUT, self._check_silence)

    def _message(self, msg: m.Message) -> None:
        """A message for the node; a registration also resets the dialer and starts the pings."""
        registered = isinstance(msg, m.Registered)
        if registered:
            self.dialer.reached()
            self.dialer.registered(COORD_AT)
            if not self.up:
                self.up = True
                self.registrations.append(self.scheduler.now)
                self._ping = self.scheduler.call_later(self.keepalive, self._send_ping)
                for held in self.backlog.release(self.scheduler.now):
                    self.conn.write(frame(held))
        self.node.from_coord(msg)
        if registered:
            self.node.registered()

    def _send_ping(self) -> None:
        self._ping = None
        if self.conn is not None and self.conn.open:
            self._write_ping()
            self._ping = self.scheduler.call_later(self.keepalive, self._send_ping)

    def _write_ping(self) -> None:
        self.conn.write(frame(m.Ping()))
        self._pings.append(self.scheduler.now)

    def _follow_resume(self) -> None:
        """Carry out the check's actions and keep its one timer."""
        for action in self.resume.next_actions():
            if isinstance(action, Ping) and self.conn is not None and self.conn.open:
                self._write_ping()
            elif isinstance(action, Reconnect):
                self.resumes.append((self.scheduler.now, action.reason))
                self.reconnect_now()
        if self._check is not None:
            self._check.cancel()
        deadline = self.resume.get_timer()
        self._check = None if deadline is None else self.scheduler.call_at(deadline, self._on_check)

    def _on_check(self) -> None:
        self._check = None
        self.resume.handle_timer(self.scheduler.now)
        self._follow_resume()

    def _check_silence(self) -> None:
        """Dead once nothing came for `silence_limit` (registered) or `CONNECT_TIMEOUT` (connecting)."""
        self._silence = None
        limit = silence_limit(self.keepalive) if self.up else CONNECT_TIMEOUT
        due = self._heard + limit
        if self.scheduler.now < due:
            self._silence = self.scheduler.call_at(due, self._check_silence)
            return
        self.conn.abort()
        self._lost("silent" if self.up else "timed out")

    def _lost(self, reason: str) -> None:
        """The connection ended: the dialer's wait, the first step of the backoff if it had registered."""
        since = self.registered_at
        registered = self._end()
        if registered:
            self.drops.append((self.scheduler.now, reason))
            lasted = self.scheduler.now - since if since is not None else 0.0
            self._next_round(self.dialer.dropped(self.jitter(), reset=reason == "reset", lasted=lasted))
        else:
            delay = self.dialer.unreachable(self.jitter())
            self._next_round(0.0 if delay is None else delay)

    def _end(self) -> bool:
        """Forget the connection (reset it if still open) and its timers; whether it had registered."""
        for timer in (self._ping, self._silence, self._round, self._check):
            if timer is not None:
                timer.cancel()
        self._ping = self._silence = self._round = self._check = None
        self._pings.clear()
        self.resume.forget()
        if self.conn is not None:
            self.conn.abort()
        self.conn = None
        was, self.up = self.up, False
        return was
