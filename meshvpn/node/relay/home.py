"""Which ready relay is home, with hysteresis: kept while it is ready, left at once when it is not.

Tailscale keeps its home DERP unless another region is clearly better for a while; so does this.
Home is left at once when it stops being ready (a dead relay), for the ready relay with the lowest
round trip, so relay death failover keeps its targets. Another ready relay takes a live home only
when its round trip has stayed below `SWITCH_RATIO` of home's for `HOME_HOLD` seconds without a
break (not ready, or not better by the margin, is a break). The one exception is the moment a relay
is first ready (start-up, a relay just announced): a relay with no history yet takes home at once
if it is better by the margin, as the node's first choice should be the best one.

Why: every change of home is announced through the coord (``relay_home``) and moves the pairs
relayed through home. A peer relay reachable only over a fragile path (a birthday path through a
random-port NAT that dies and is punched again) would otherwise take home back each time its path
returned and lose it each time the path died; now it takes home back only once its path has held
for `HOME_HOLD`. Sans-IO: ``now`` is an argument.
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol

SWITCH_RATIO = 0.7
"""A ready relay replaces a live home only if its RTT is below this fraction of home's..."""
HOME_HOLD = 10.0
"""... for this many seconds without a break: longer than a peer relay's link stayed up between
losses in the lab's peer-relay world (0.3-2.5 s), short enough that a better relay is home soon."""


class Candidate(Protocol):
    """What the choice reads of a relay link (`meshvpn.node.relay.link.RelayLink`)."""

    @property
    def name(self) -> str: ...

    ready: bool
    rtt: Optional[float]


class HomeChoice:
    """The home relay, and since when each other ready relay has been better than it."""

    def __init__(self, hold: float = HOME_HOLD, ratio: float = SWITCH_RATIO) -> None:
        self.hold, self.ratio = hold, ratio
        self.home: Optional[Candidate] = None
        self._better_since: dict[str, float] = {}
        """Relay name → when it last started being ready and better than home by the margin."""
        self._seen: set[Candidate] = set()
        """The relays that have been ready before: no longer new."""

    def choose(self, links: Iterable[Candidate], now: float) -> Optional[Candidate]:
        """The home among `links` (every relay the node keeps) at `now`; None without a ready one."""
        links = list(links)
        ready = [link for link in links if link.ready]
        new = {link for link in ready if link not in self._seen}
        self._seen = {link for link in links if link in self._seen or link.ready}
        home = self.home
        if home is None or not home.ready or not any(link is home for link in links):
            self._take(_fastest(ready))
            return self.home
        better = [link for link in ready if link is not home and self._better(link, home)]
        self._better_since = {link.name: self._better_since.get(link.name, now) for link in better}
        due = [link for link in better if link in new or now >= self._better_since[link.name] + self.hold]
        if due:
            self._take(_fastest(due))
        return self.home

    def deadline(self) -> Optional[float]:
        """When a relay that stays better takes home: the caller's timer must run `choose` then."""
        return min(self._better_since.values()) + self.hold if self._better_since else None

    def _better(self, link: Candidate, home: Candidate) -> bool:
        return link.rtt is not None and home.rtt is not None and link.rtt < self.ratio * home.rtt

    def _take(self, home: Optional[Candidate]) -> None:
        self.home = home
        self._better_since = {}


def _fastest(links: list[Candidate]) -> Optional[Candidate]:
    """The link with the lowest RTT (unmeasured ones last), the first of equals."""
    return min(links, key=lambda link: link.rtt if link.rtt is not None else float("inf"), default=None)
