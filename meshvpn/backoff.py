"""Capped exponential backoff, the one rule every retry in meshvpn waits by.

Reconnects to the coord, relay TCP links, TURN allocations and hole-punching rounds all
wait ``initial``, then twice that, and so on up to ``maximum``: one function, so the rule
(and its guard against huge exponents) is written once. Waits that a whole fleet may start at the
same moment (a coord or a relay restarted) are spread by `jittered`, so the fleet comes back
spread over the wait rather than all at its end.
"""

from typing import Callable

MAX_DOUBLINGS = 32
"""Past this many doublings the result is `maximum` for any sane `initial`; it bounds 2**n."""


def doubling(initial: float, maximum: float, doublings: int) -> float:
    """``initial * 2**doublings``, never above ``maximum`` (``doublings`` counts from 0)."""
    return min(initial * 2 ** min(doublings, MAX_DOUBLINGS), maximum)


def jittered(delay: float, draw: float) -> float:
    """`delay` spread ±50 % by `draw`, a uniform draw in [0, 1) from the caller's random source."""
    return delay * (0.5 + draw)


def uniform(random_bytes: Callable[[int], bytes]) -> float:
    """A uniform draw in [0, 1) from a ``random_bytes`` source (the sans-IO machines' randomness)."""
    return int.from_bytes(random_bytes(4), "big") / 2 ** 32


RESET_REDIAL_AFTER = 2.0
"""Seconds a connection must have lasted for the server's reset of it to be redialled at once."""


def redial_at_once(reset: bool, lasted: float) -> bool:
    """Whether a lost connection is redialled without waiting: the server *reset* it (it no longer
    knows it: our NAT re-mapped us, or its host restarted), so a live server takes a new one at
    once, and a dead one refuses it and the backoff starts then. Only a connection that `lasted`
    `RESET_REDIAL_AFTER`: a server (or a middlebox) that resets every fresh connection gets the
    backoff, not a loop of connections. A server process that exits closes its connections (EOF)
    instead, and those wait, so a restart's reconnections stay spread."""
    return reset and lasted >= RESET_REDIAL_AFTER
