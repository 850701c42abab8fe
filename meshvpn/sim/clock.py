"""A fake clock and a deterministic event queue for simulated networks.

Simulated time only moves when the scheduler runs an event, so a test of minutes of
network behaviour takes milliseconds and always unfolds the same way. Events due at the
same instant run in the order they were scheduled.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Clock:
    """Simulated monotonic time in seconds; only the scheduler advances it."""

    now: float = 0.0


@dataclass(order=True)
class TimerHandle:
    """A scheduled callback; `cancel()` keeps it from running."""

    when: float
    seq: int
    callback: Callable[..., Any] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False, default=())
    cancelled: bool = field(compare=False, default=False)

    def cancel(self) -> None:
        """Drop the callback; the heap entry is skipped when it comes due."""
        self.cancelled = True


class Scheduler:
    """Runs callbacks in time order on a `Clock`, advancing it to each event's time."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock if clock is not None else Clock()
        self._queue: list[TimerHandle] = []
        self._seq = 0

    @property
    def now(self) -> float:
        """The current simulated time."""
        return self.clock.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run `callback(*args)` at `when`; a time in the past means "as soon as possible"."""
        self._seq += 1
        handle = TimerHandle(max(when, self.clock.now), self._seq, callback, args)
        heapq.heappush(self._queue, handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run `callback(*args)` `delay` seconds from now."""
        return self.call_at(self.clock.now + delay, callback, *args)

    def next_event_time(self) -> float | None:
        """When the next live event is due, or None if nothing is scheduled."""
        while self._queue and self._queue[0].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0].when if self._queue else None

    def run_until(self, when: float, max_events: int = 1_000_000) -> int:
        """Run every event due up to and including `when`, then set the clock to `when`.

        `max_events` bounds a runaway simulation (an event that keeps rescheduling itself
        at the same instant); exceeding it raises RuntimeError. Returns the events run.
        """
        ran = 0
        while True:
            due = self.next_event_time()
            if due is None or due > when:
                break
            handle = heapq.heappop(self._queue)
            self.clock.now = handle.when
            handle.callback(*handle.args)
            ran += 1
            if ran >= max_events:
                raise RuntimeError(f"simulation ran {ran} events before t={when}")
        self.clock.now = max(self.clock.now, when)
        return ran

    def run_for(self, duration: float, max_events: int = 1_000_000) -> int:
        """Run the simulation for `duration` seconds of simulated time."""
        return self.run_until(self.clock.now + duration, max_events)
