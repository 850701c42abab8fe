"""Capped exponential backoff, the one rule every retry in meshvpn waits by.

Reconnects to the coord, relay TCP links, TURN allocations and hole-punching rounds all
wait ``initial``, then twice that, and so on up to ``maximum``: one function, so the rule
(and its guard against huge exponents) is written once.
"""

MAX_DOUBLINGS = 32
"""Past this many doublings the result is `maximum` for any sane `initial`; it bounds 2**n."""


def doubling(initial: float, maximum: float, doublings: int) -> float:
    """``initial * 2**doublings``, never above ``maximum`` (``doublings`` counts from 0)."""
    return min(initial * 2 ** min(doublings, MAX_DOUBLINGS), maximum)
