"""One token bucket, without a clock: every rate limit of the coord, the relay and STUN."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens a second up to `burst`; `take` spends one if there is one."""

    __slots__ = ("rate", "burst", "tokens", "refilled")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.refilled = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Refill for the time since the last call, then spend `cost` if the bucket holds it."""
        tokens = min(self.tokens + max(0.0, now - self.refilled) * self.rate, self.burst)
        self.refilled = max(now, self.refilled)
        if tokens < cost:
            self.tokens = tokens
            return False
        self.tokens = tokens - cost
        return True

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled to its burst: an idle source can then be forgotten."""
        return self.tokens + max(0.0, now - self.refilled) * self.rate >= self.burst
