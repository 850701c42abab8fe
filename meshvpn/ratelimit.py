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

    def take_many(self, count: int, now: float) -> int:
        """Spend one token each for as many of `count` items as the bucket holds; how many that is.

        The same as `count` calls of `take` at one `now`: once one fails, the rest fail too.
        """
        tokens = min(self.tokens + max(0.0, now - self.refilled) * self.rate, self.burst)
        self.refilled = max(now, self.refilled)
        taken = min(count, int(tokens)) if count > 0 else 0
        self.tokens = tokens - taken
        return taken

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled to its burst: an idle source can then be forgotten."""
        return self.tokens + max(0.0, now - self.refilled) * self.rate >= self.burst


class SourceLimiter:
    """A `TokenBucket` per source plus one for all of them, in a table of bounded size.

    The per-source bucket bounds what one address (a spoofed victim, say) can be sent; the
    global one bounds the sum over any number of sources. When the table is full, sources whose
    bucket has refilled are forgotten first (they lose nothing), then the oldest.
    """

    def __init__(self, rate: float, burst: float, total_rate: float, total_burst: float,
                 now: float, max_sources: int = 4096) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._total = TokenBucket(total_rate, total_burst, now)
        self._sources: dict[object, TokenBucket] = {}
        self.refused = 0
        """Requests refused so far, by either bucket."""

    def allow(self, source: object, now: float) -> bool:
        """Whether one more answer to `source` is allowed at `now` (and count it if so)."""
        bucket = self._sources.get(source)
        if bucket is None:
            if len(self._sources) >= self.max_sources:
                self._shrink(now)
            bucket = self._sources[source] = TokenBucket(self.rate, self.burst, now)
        if bucket.take(now) and self._total.take(now):
            return True
        self.refused += 1
        return False

    def _shrink(self, now: float) -> None:
        self._sources = {s: b for s, b in self._sources.items() if not b.full(now)}
        while len(self._sources) >= self.max_sources:
            del self._sources[next(iter(self._sources))]
