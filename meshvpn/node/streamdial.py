"""When and how to (re)connect a stream to a server: backoff, and plain TCP and TLS raced.

A node falls back to a stream when UDP to a server gets no answer: to a meshvpn relay (its
channel over TCP) or to a TURN server (RFC 8656 over TCP). Some networks then let nothing
through but port 443, or nothing but TLS, so a server may offer a TLS port too. Trying plain
TCP first and TLS only once it timed out would cost a whole connect timeout on such a network,
so every connection is a race (Happy Eyeballs, `meshvpn.node.streamrace`) over `targets`: each
of the server's addresses (in its family order) with the kind that won last (plain TCP at
first), then each with the other kind, a stagger apart; the first to finish its handshake wins.
A lost stream is reconnected after a doubling backoff, with the same race, each wait spread ±50 %
by the owner's random source (`meshvpn.backoff.jittered`, as the coord link's dialer does): a relay
that restarts drops every node's stream at once, and without the spread every node would dial it
again at the same instant, a thundering herd at 10,000 nodes. One the server reset after it had
lasted a while is reconnected at once (`meshvpn.backoff.redial_at_once`, the coord link's rule): a
relay that no longer knows the stream (it restarted, or our NAT re-mapped us) takes a new one at
once, where the backoff's first step would leave the link down for half a second more.

When the host's network comes back (`network_back`), `resume` checks that a connected stream
carries (`meshvpn.node.tcpresume`); a stream that waits behind TCP's backed-off retransmission
timer, or does not answer the owner's ping within the check's wait, is `replace`d: closed, and a
new one raced at once, without backoff. So is a race still connecting, whose SYNs wait for TCP's
backed-off SYN retransmission (1 s doubling: 1 to 2 s after a few seconds' outage), and a stream
waiting out its reconnection backoff tries at once. The ping is the owner's own request that the
server must answer (a relay hello, a TURN Refresh); it tells `resume.answered` of every answer on
the stream, with the time its request went.

Sans-IO: the owner asks `due(now)`, says `attempt()` when it asks the shell to connect, and
passes on `up(tls)` and `down(now)`; it closes the stream when `replacing` says so, and keeps
one timer on `deadline()` (`handle_timer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

from meshvpn.backoff import doubling, jittered, redial_at_once
from meshvpn.node.tcpresume import Reconnect, TcpResume
from meshvpn.wire import Endpoint


class StreamTarget(NamedTuple):
    """One attempt of a stream's race: the server's address and port, and whether inside TLS."""

    endpoint: Endpoint
    tls: bool = False


@dataclass
class DialConfig:
    """Reconnection timing; every default is the documented one."""

    backoff_initial: float = 0.5
    """First wait before reconnecting a lost stream; doubles per failure."""
    backoff_max: float = 10.0
    """Longest wait between attempts."""


class StreamDial:
    """The connection state of one stream to one server, and when to try again."""

    def __init__(self, tls_port: Optional[int], config: Optional[DialConfig] = None,
                 draw: Callable[[], float] = lambda: 0.5) -> None:
        self.config = config if config is not None else DialConfig()
        self.draw = draw
        """Uniform draws in [0, 1) that spread the backoff's waits (the owner's random source; the
        default, 0.5, spreads nothing)."""
        self.tls_port = tls_port
        self.wanted = False
        self.connecting = False
        self.connected = False
        self.tls = False
        """Whether the current (or last) connection is TLS to `tls_port` rather than plain TCP;
        that kind goes first in the next race."""
        self.retry_at = 0.0
        self._failures = 0
        self._up_at: Optional[float] = None
        """When the current connection came up, while it is up."""
        self.resume = TcpResume()
        """The check of the connection once the host's network is back (the owner pings and answers)."""
        self.replacing = False
        """The connection is to be closed and a new one raced at once (`replace`); the owner closes
        it and clears this."""
        self.replaced_because = ""
        """Why the last `replace` was, for the log."""

    def want(self, wanted: bool = True) -> None:
        self.wanted = wanted

    def due(self, now: float) -> bool:
        """Whether the owner should ask the shell to connect now."""
        return self.wanted and not (self.connecting or self.connected) and now >= self.retry_at

    def deadline(self) -> Optional[float]:
        """When `due` next becomes true, or the check's wait ends (`handle_timer`), if either will."""
        if self.wanted and not (self.connecting or self.connected):
            return self.retry_at
        return self.resume.get_timer()

    def handle_timer(self, now: float) -> None:
        """A check whose ping got no answer within its wait replaces the stream."""
        self.resume.handle_timer(now)
        self._follow_resume(now)

    def network_back(self, now: float, retransmitting: Optional[bool]) -> bool:
        """The host's network is usable again (`NetworkChanged.resumed`). A connected stream, of which
        the kernel says whether it waits for a backed-off retransmission (None: it does not say), is
        replaced at once if it does, else checked; a race still connecting is replaced at once (its
        SYNs wait for TCP's backed-off SYN retransmission); one waiting out its backoff tries at once.
        True when the owner pings over the stream now."""
        if self.connecting:
            self.replace(now, "its connection attempts wait for TCP's backed-off SYN retransmission")
            return False
        if not self.connected:
            self.retry_at = min(self.retry_at, now)  # the waits were for a network that was gone
            return False
        self.resume.resumed(now, retransmitting)
        return self._follow_resume(now)

    def attempt(self) -> None:
        """The owner asked the shell to connect; `up` or `down` follows."""
        self.connecting = True

    def targets(self, addresses: Sequence[Endpoint], plain_port: int) -> tuple[StreamTarget, ...]:
        """The race of the next connection: every address (in the order given) with the kind that
        won last, then every address with the other kind when the server has a TLS port."""
        kinds = (self.tls, not self.tls) if self.tls_port is not None else (False,)
        return tuple(StreamTarget(address._replace(port=self.tls_port if tls else plain_port), tls)
                     for tls in kinds for address in addresses)

    def up(self, now: float, tls: bool = False) -> None:
        """The stream is established at `now`, inside TLS or not (the race's winner)."""
        self.connecting, self.connected = False, True
        self.tls = tls and self.tls_port is not None
        self._failures = 0
        self._up_at = now

    def down(self, now: float, reset: bool = False) -> None:
        """The stream failed to connect, or closed (the server `reset` it): try again after the
        backoff, or at once when the server reset a stream that had lasted (the module's rules)."""
        lasted = now - self._up_at if self.connected and self._up_at is not None else 0.0
        self._drop()
        if redial_at_once(reset, lasted):
            self.retry_at = now
            return
        cfg = self.config
        self.retry_at = now + jittered(doubling(cfg.backoff_initial, cfg.backoff_max, self._failures), self.draw())
        self._failures += 1

    def replace(self, now: float, because: str = "") -> None:
        """The connection waits behind TCP's backed-off retransmission timer, or did not answer its
        check (`resume`): the owner closes it (`replacing`) and races a new one at once."""
        self._drop()
        self.replacing, self.replaced_because = True, because
        self.retry_at = now

    def _follow_resume(self, now: float) -> bool:
        """Carry out the check's actions: True when it pings."""
        ping = False
        for action in self.resume.next_actions():
            if isinstance(action, Reconnect):
                self.replace(now, action.reason)
            else:
                ping = self.connected
        return ping

    def _drop(self) -> None:
        self.connecting = self.connected = False
        self._up_at = None
        self.resume.forget()

    @property
    def kind(self) -> str:
        """``tls`` or ``tcp``, for status."""
        return "tls" if self.tls else "tcp"
