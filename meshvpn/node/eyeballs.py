"""Happy Eyeballs (RFC 8305) for the coord link: the order of its attempts and when each starts.

Why race at all: a coord known at an IPv6 and an IPv4 address (a name with AAAA and A records,
or several instances) is often reached over one family only. An IPv6 route that is present but
drops every packet does not refuse the connection, it lets it time out, and trying the
addresses one after the other would cost that whole timeout before IPv4 is tried. So the link
starts an attempt, starts the next one `STAGGER` seconds later if the first has not finished
its channel handshake by then (at once if it failed), and so on; the first handshake to finish
wins and the others are closed.

* **Order** (§4): the families alternate, IPv6 first, each family keeping its own order (the
  configured order, a name's addresses rotated per node; `meshvpn.node.coorddial`).
* **Stagger** (§5): `STAGGER` between starts, RFC 8305's recommended Connection Attempt Delay.
"""

from __future__ import annotations

from itertools import zip_longest
from typing import Optional, Sequence

from meshvpn.node.family import is_ipv6
from meshvpn.wire import Endpoint

STAGGER = 0.25
"""Seconds between the starts of two attempts while neither has finished (RFC 8305 §5)."""


def interleave(order: Sequence[Endpoint]) -> list[Endpoint]:
    """`order` with the families alternating, IPv6 first, each family in its own order (§4)."""
    ipv6 = [endpoint for endpoint in order if is_ipv6(endpoint)]
    ipv4 = [endpoint for endpoint in order if not is_ipv6(endpoint)]
    return [endpoint for pair in zip_longest(ipv6, ipv4) for endpoint in pair if endpoint is not None]


class Race:
    """When the next attempt of one race starts: `stagger` after the latest start while attempts
    are running, at once when none is (the last one failed), never once one has won."""

    def __init__(self, stagger: float = STAGGER) -> None:
        self.stagger = stagger
        self.running = 0
        """Attempts started and not yet finished."""
        self.next_start: Optional[float] = None
        """When the next attempt may start while others run; None before the first start."""
        self.over = False
        """An attempt won: nothing more starts."""

    def start_now(self, now: float) -> bool:
        """Whether to start the next attempt (if there is one) at `now`."""
        if self.over:
            return False
        return self.running == 0 or self.next_start is None or now >= self.next_start

    def started(self, now: float) -> None:
        self.running += 1
        self.next_start = now + self.stagger

    def failed(self, now: float) -> None:
        """An attempt failed: the next one starts at once (§5), not at the end of the stagger."""
        self.running -= 1
        self.next_start = now

    def won(self) -> None:
        self.over = True

    def get_timer(self) -> Optional[float]:
        """When `start_now` turns true while attempts are running; None when only an attempt's
        end can change anything."""
        if self.over or self.running == 0:
            return None
        return self.next_start
