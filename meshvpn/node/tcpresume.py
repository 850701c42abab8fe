"""Whether a standing TCP connection carries again once the host's network is back (sans-IO).

A link outage that leaves the addresses as they were leaves every TCP connection standing
(`meshvpn.node.netchange`): the coord link, a punched TCP path to a peer (`meshvpn.node.tcp`),
a stream to a relay (`meshvpn.node.relay.link`) or to a TURN server (`meshvpn.node.turn.server`),
the streams through `meshvpn.node.streamdial`. But TCP's retransmission timer backed off while
nothing got through: what the node wrote during the outage goes again only at the next
retransmission, up to 3.2 s after the link is back (0.2 s doubling through a 5 s outage), and what
the far end wrote waits likewise on its side. So when the network is usable again under such a
connection (`NetworkChanged.resumed`), its owner does not wait for those timers:

* if our side waits for a backed-off retransmission (the kernel says a retransmission timeout
  fired for data still unacknowledged, `meshvpn.node.tcpinfo`), it replaces the connection at
  once (`Reconnect`): whatever the old one held is sent again by the rules that resend it on a
  new one (a registration, a relay hello, a path's traffic);
* else it pings at once (`Ping`: the coord's ping, a relay hello or a TURN Refresh over the
  stream, a probe of the TCP path) and replaces the connection if that ping is not answered within `answer_wait`: at
  least `MIN_WAIT`, and `RTTS` times the slowest of the last `ANSWERS` answers, so a far end that
  is merely slow is given its time. The answer proves both directions carry: the far end sends it
  after whatever it had queued, in answer to what we sent after ours;
* at most one such replacement per `HOLDOFF`: a link that flaps does not make new connections at
  every flap (within it, TCP recovers by itself, as before).

The owner (the coord link in `meshvpn.node.coordlink` and the sim's; a relay link's or TURN
server's stream; TCP punching)
feeds the answers to every ping with the time that ping went (or, where answers are not matched to
pings, anything heard from the far end after the check's ping: `heard`), carries out `Ping` and
`Reconnect`, and keeps one timer on `get_timer()`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional, Union

MIN_WAIT = 0.5
"""Seconds the check's ping may take, however fast the far end answered before."""
RTTS = 4
"""Round trips the check's ping may take, of the slowest recent answer."""
ANSWERS = 4
"""Recent answers whose round trips are kept."""
HOLDOFF = 30.0
"""Seconds after a reconnect of these rules before the next one."""


@dataclass(frozen=True)
class Ping:
    """Send a ping on the connection now (and tell `answered` when the ping it answers went)."""


@dataclass(frozen=True)
class Reconnect:
    """Drop the connection and dial again at once, without backoff."""

    reason: str
    """For the log."""


Action = Union[Ping, Reconnect]


class TcpResume:
    """The check of one TCP connection (and of those that replace it) after the host's network came back."""

    def __init__(self, min_wait: float = MIN_WAIT, rtts: float = RTTS, holdoff: float = HOLDOFF) -> None:
        self.min_wait, self.rtts, self.holdoff = min_wait, rtts, holdoff
        self._rtts: deque[float] = deque(maxlen=ANSWERS)
        """The round trips of the far end's last answers to our pings."""
        self._since: Optional[float] = None
        """When the running check's ping went: an answer to it, or to a later ping, passes it."""
        self._deadline: Optional[float] = None
        self._reconnected = -math.inf
        self._actions: list[Action] = []

    @property
    def answer_wait(self) -> float:
        """Seconds the check waits for the answer to its ping."""
        return max(self.min_wait, self.rtts * max(self._rtts, default=0.0))

    def resumed(self, now: float, retransmitting: Optional[bool]) -> None:
        """The network is back under the registered connection; `retransmitting`: whether the kernel
        says our side waits for a backed-off retransmission (None: it does not say)."""
        if now - self._reconnected < self.holdoff:
            return
        if retransmitting:
            self._reconnect(now, "what it sent while the network was gone waits for TCP's backed-off retransmission")
            return
        self._actions.append(Ping())
        self._since, self._deadline = now, now + self.answer_wait

    @property
    def checking(self) -> bool:
        """Whether a check waits for the answer to its ping."""
        return self._since is not None

    def answered(self, now: float, sent_at: Optional[float]) -> None:
        """The far end answered the ping that went at `sent_at` (pings are answered in order)."""
        if sent_at is None:
            return
        self._rtts.append(now - sent_at)
        if self._since is not None and sent_at >= self._since:
            self._since = self._deadline = None

    def heard(self, now: float) -> None:
        """Something came from the far end after the running check's ping, on a connection whose
        answers are not matched to pings (a TCP path: the peer sends it after whatever it had
        queued): it passes the check, and the wait since the ping counts as a round trip."""
        if self._since is not None:
            self.answered(now, self._since)

    def forget(self) -> None:
        """The connection ended: a check of it is moot."""
        self._since = self._deadline = None

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline:
            self._reconnect(now, f"no answer to its ping within {self.answer_wait:.2f} s of the network's return")

    def get_timer(self) -> Optional[float]:
        return self._deadline

    def next_actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    def _reconnect(self, now: float, reason: str) -> None:
        self._since = self._deadline = None
        self._reconnected = now
        self._actions.append(Reconnect(reason))
