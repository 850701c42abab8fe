"""Which coord address the node tries next, and how long it waits first.

A node may know several coordination servers that share one database (``coord.address`` and
``coord.other_addresses``, each a host:port or a DNS name with several addresses). The rules:

* A *round* tries every known address once, the one that last registered us first, then the
  configured order (a name's addresses rotated by a per-node offset, so that nodes spread over
  the instances behind one name) with the families alternating, IPv6 first. The link races the
  attempts (`meshvpn.node.eyeballs`): an address that does not answer within the stagger, or
  fails, has the next one started beside it.
* Only when a whole round reached no coord does the node wait: ``backoff_delay`` of the rounds
  failed in a row, doubling from ``BACKOFF_INITIAL`` to ``BACKOFF_MAX`` with ±50 % jitter. The
  cap is short (a few seconds) so that a node is back within seconds of a coord answering again,
  and the jitter spreads a restarted coord's reconnections over that time.
* Any sign of a coord (a finished channel handshake, a registration) resets that count. A
  registered link that ends waits the first step, unless the coord reset a connection that had
  lasted `RESET_REDIAL_AFTER`: then the new round starts at once (`Dialer.dropped`).
* A coord that *refuses* the node (an ``error`` that closes the channel: a bad key, ``busy``)
  is there but does not want it now: those refusals back off on their own count, up to
  ``REFUSED_MAX``, so a misconfigured node does not knock every few seconds for ever. A coord
  that takes the TCP connection but does not finish the handshake in time (overloaded, or a
  server without the pinned key) counts the same way once the round is over, so thousands of
  nodes do not press an overloaded coord every few seconds; the round still goes on to the
  other addresses at once.
* A link is dead once it heard nothing for ``silence_limit(keepalive)``: the link pings every
  ``keepalive`` seconds and a coord answers at once, so one keepalive interval plus
  ``ANSWER_TIMEOUT`` of silence is enough (not three intervals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from meshvpn.backoff import RESET_REDIAL_AFTER, doubling, jittered, redial_at_once
from meshvpn.node.eyeballs import interleave
from meshvpn.wire import Endpoint

BACKOFF_INITIAL = 0.5
"""Seconds before the first new round; doubles per round that reached no coord."""
BACKOFF_MAX = 2.0
"""Longest wait between rounds that reached no coord (3 s with the jitter at its top)."""
REFUSED_MAX = 30.0
"""Longest wait after the coord refused the node."""
ANSWER_TIMEOUT = 5.0
"""Seconds a coord may take to answer the link's ping before the link counts as dead."""
KEEPALIVE = 15.0
"""Seconds between the link's pings to the coord."""
CONNECT_TIMEOUT = 10.0
"""Seconds for TCP connect plus the channel handshake."""


def backoff_delay(failures: int, jitter: float, maximum: float = BACKOFF_MAX) -> float:
    """Wait before new round number ``failures`` (1-based); ``jitter`` in [0, 1) spreads it ±50 %."""
    return jittered(doubling(BACKOFF_INITIAL, maximum, failures - 1), jitter)


def remapped(before: Optional[Endpoint], after: Optional[Endpoint], registered_at: Optional[float],
             asked_at: float) -> bool:
    """Whether STUN's answer shows the coord connection dead: our public mapping moved (the NAT
    forgot us, and with us the connection's own mapping), and the connection was made before we
    asked. Its next frame would only draw the coord's reset, so the link reconnects at once."""
    return (before is not None and after is not None and before != after
            and registered_at is not None and registered_at < asked_at)


def silence_limit(keepalive: float) -> float:
    """Seconds without a frame from the coord after which the link is dead."""
    return keepalive + ANSWER_TIMEOUT


@dataclass
class Dialer:
    """The order of attempts and the waits between rounds for one node's coord link."""

    spread: float = 0.0
    """A per-node draw in [0, 1): how far each name's addresses are rotated."""
    preferred: Optional[Endpoint] = None
    """The address that last registered us: first in every round while it is known."""
    failures: int = 0
    """Rounds in a row that reached no coord."""
    refusals: int = 0
    """Registrations in a row the coord refused."""
    _round: list[Endpoint] = field(default_factory=list)
    _unanswered = False
    """Some address of this round took the connection but never finished the handshake."""

    def plan(self, groups: Sequence[Sequence[Endpoint]]) -> list[Endpoint]:
        """Start a round over the configured addresses (one group per address, a name's
        addresses in resolver order); returns the round's order."""
        order: list[Endpoint] = []
        for group in groups:
            turn = int(self.spread * len(group)) if group else 0
            order += [endpoint for endpoint in (*group[turn:], *group[:turn]) if endpoint not in order]
        order = interleave(order)
        if self.preferred in order:
            order.remove(self.preferred)
            order.insert(0, self.preferred)
        self._round = list(order)
        self._unanswered = False
        return order

    @property
    def remaining(self) -> int:
        """Addresses of this round not tried yet."""
        return len(self._round)

    def next_endpoint(self) -> Optional[Endpoint]:
        """The address to try now; None when the round is over."""
        return self._round.pop(0) if self._round else None

    def unreachable(self, jitter: float) -> Optional[float]:
        """The address just tried gave no registration: None to try the next one at once, or
        the seconds to wait before a new round when this was the last."""
        if self._round:
            return None
        if self._unanswered:
            self.refusals += 1
            return backoff_delay(self.refusals, jitter, REFUSED_MAX)
        self.failures += 1
        return backoff_delay(self.failures, jitter)

    def unanswered(self) -> None:
        """An address of this round took the connection but not the handshake: a round that
        ends without a coord waits on the refusals' longer ladder (see `unreachable`)."""
        self._unanswered = True

    def reached(self) -> None:
        """A coord answered (the channel handshake finished): it is back, so waits start short."""
        self.failures = 0

    def refused(self, jitter: float) -> float:
        """The coord refused the node and closed: the round ends; seconds to wait."""
        self._round.clear()
        self.refusals += 1
        return backoff_delay(self.refusals, jitter, REFUSED_MAX)

    def registered(self, endpoint: Endpoint) -> None:
        """Registered through `endpoint`: stick to it, and forget every failure."""
        self.preferred = endpoint
        self.failures = self.refusals = 0

    def dropped(self, jitter: float, reset: bool = False, lasted: float = math.inf) -> float:
        """A registered link ended: seconds before the next round (the first step of the backoff).
        A connection the coord `reset` (it no longer knows it: our NAT re-mapped us, or its host
        restarted) has a new round at once: a live coord takes it, a dead one refuses it and the
        backoff starts then. A coord process that exits closes its connections (EOF), so a
        restart's reconnections stay spread by the jitter. Only a connection that `lasted`
        `RESET_REDIAL_AFTER` is redialled at once: a coord (or a middlebox) that resets every
        fresh registration gets the backoff, not a loop of registrations."""
        self._round.clear()
        if redial_at_once(reset, lasted):
            self.failures = 0
            return 0.0
        self.failures = 1
        return backoff_delay(self.failures, jitter)
