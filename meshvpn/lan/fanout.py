"""Fan-out of one broadcast or multicast packet to many peers, under a per-node rate limit.

Each copy is sealed and sent to one peer on the usual data path, so a storm costs the mesh
copies × bytes. Two token buckets (copies per second, bytes per second), each holding at most
`burst` seconds of its rate, pay for every copy: a packet goes to all its recipients or to
none (a partial fan-out would favour whichever peers come first). Drops are counted by reason,
and unicast traffic never waits on these buckets.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence, TypeVar

from meshvpn.config import FanoutConfig

T = TypeVar("T")

NO_RECIPIENTS = "no_recipients"
RATE_PACKETS = "rate_packets"
RATE_BYTES = "rate_bytes"


class TokenBucket:
    """Tokens refill at `rate` per second up to `rate * burst`; starts full."""

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.capacity = rate, rate * burst
        self.tokens, self.updated = self.capacity, now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def can_take(self, amount: float) -> bool:
        return amount <= self.tokens

    def take(self, amount: float) -> None:
        self.tokens -= amount

    def ready_at(self, amount: float, now: float) -> float:
        """When (refilled at ``now``) it will hold ``amount``, or be full if it never can; ``now`` if it does."""
        short = min(amount, self.capacity) - self.tokens
        return now + short / self.rate if short > 0 and self.rate > 0 else now


class Fanout:
    """Decides which broadcast/multicast packets are sent, and counts the rest."""

    def __init__(self, limits: FanoutConfig, now: float):
        self.limits = limits
        self.packets = TokenBucket(limits.packets_per_second, limits.burst, now)
        self.bytes = TokenBucket(limits.bytes_per_second, limits.burst, now)
        self.dropped: Counter[str] = Counter()
        self.sent_packets = 0
        self.sent_copies = 0
        self.held_until = 0.0
        """Until when the buckets cannot pay for a fan-out like the last one decided (0.0 or past: they can).
        The native thread drops broadcast and multicast reads until then (`_fastpath_fanout.c`), so a
        storm wakes Python about once for each fan-out the budget lets through."""
        self._held_for = RATE_PACKETS

    def admit(self, size: int, recipients: Sequence[T], now: float) -> Sequence[T]:
        """The peers to send this `size`-byte packet to: all of `recipients`, or none."""
        if not recipients:
            self.dropped[NO_RECIPIENTS] += 1
            return ()
        self.packets.refill(now)
        self.bytes.refill(now)
        copies = len(recipients)
        chosen: Sequence[T] = ()
        if not self.packets.can_take(copies):
            self.dropped[RATE_PACKETS] += 1
        elif not self.bytes.can_take(copies * size):
            self.dropped[RATE_BYTES] += 1
        else:
            self.packets.take(copies)
            self.bytes.take(copies * size)
            self.sent_packets += 1
            self.sent_copies += copies
            chosen = recipients
        self._hold(copies, size, now)
        return chosen

    def _hold(self, copies: int, size: int, now: float) -> None:
        """Hold fan-outs until both buckets could pay for another ``copies`` of ``size`` bytes."""
        self.held_until, self._held_for = max((self.packets.ready_at(copies, now), RATE_PACKETS),
                                              (self.bytes.ready_at(copies * size, now), RATE_BYTES))

    def held(self, count: int) -> None:
        """``count`` broadcast or multicast packets were dropped where they were read, before ``held_until``."""
        self.dropped[self._held_for] += count
