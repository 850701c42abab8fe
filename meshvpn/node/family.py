"""IPv6 against IPv4 for one peer: which family's direct path is better, and the race that decides.

A peer with candidates of both families is probed in the same punch rounds (Happy Eyeballs
without a head start), and the first proven path is taken at once. Which family proves itself
first says little: a round can be lost to a filter that opens only when the peer's own punch
passes it, on either family. So once a direct path is picked, the other family's candidates keep
being probed for `race_window`, and a path of the other family replaces the current one if
`faster`: IPv6 when its round trip is as good as IPv4's (within IPV6_SLACK), IPv4 only when it
beats IPv6 by more than that, so two equal paths never take turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from meshvpn.node.candidates import Candidate
from meshvpn.wire import Endpoint

IPV6_SLACK = 0.002
"""Seconds an IPv6 path's round trip may exceed an IPv4 one's and still count as good as it."""


def is_ipv6(endpoint: tuple) -> bool:
    return ":" in endpoint[0]


def family_slack(new: Endpoint, current: Endpoint | None) -> float:
    """Seconds of round trip a path to `new` may lose against one to `current` for its family:
    IPV6_SLACK for IPv6 over IPv4, minus that for IPv4 over IPv6, 0 within one family."""
    return (is_ipv6(new) - (current is not None and is_ipv6(current))) * IPV6_SLACK


def faster(new: Endpoint, rtt: float, current: Endpoint | None, current_rtt: float | None) -> bool:
    """Whether a direct path to `new` measured at `rtt` beats the current one of the same kind."""
    return rtt < (current_rtt or 0.0) + family_slack(new, current)


@dataclass
class RaceTiming:
    """The family race's timer (part of `PathFinderConfig`); the default is the documented one."""

    race_window: float = 1.0
    """Seconds after a direct path is picked during which the other family's candidates are still
    probed, each punch interval, and may replace it when `faster`."""


class FamilyRace:
    """The race of one peer's two families after a direct path was picked."""

    def __init__(self, timing: RaceTiming) -> None:
        self.timing = timing
        self.until = float("-inf")
        """When the race ends; in the past while none runs."""

    def picked(self, endpoint: Endpoint, candidates: Sequence[Candidate], now: float, interval: float) -> float | None:
        """A direct path to `endpoint` was picked: race the other family's candidates, if any,
        from now to `race_window` (a race already running keeps its end). Returns when the next
        round is due, or None when there is nothing to race."""
        if now >= self.until:
            others = any(is_ipv6(c.endpoint) != is_ipv6(endpoint) for c in candidates)
            self.until = now + self.timing.race_window if others else float("-inf")
        return self.next_round(now, interval)

    def next_round(self, now: float, interval: float) -> float | None:
        """When the next racing round is due, or None when the race is over by then."""
        return now + interval if now + interval < self.until else None

    def targets(self, targets: list[Candidate], current: Endpoint, now: float) -> list[Candidate]:
        """What a round sends while on a direct path to `current`: during the race only the
        other family's candidates, after it everything."""
        if now >= self.until:
            return targets
        return [c for c in targets if is_ipv6(c.endpoint) != is_ipv6(current)]

    def open(self, new: Endpoint, current: Endpoint, now: float) -> bool:
        """Whether a path to `new` may still replace the one to `current` for being faster."""
        return now < self.until and is_ipv6(new) != is_ipv6(current)
