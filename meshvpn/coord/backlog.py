"""The bytes queued in connections to nodes that read slowly, which bound the fan-out.

Every fan-out round writes a frame to every node online. When the nodes read more slowly than
the coord writes (after a restart, with 10,000 nodes reconnecting on a starved machine), the
frames pile up in the connections' write buffers, up to `ServerLimits.max_write_buffer` each: at
10,000 nodes that is gigabytes. So the fan-out serves its next slice only while the connections
above their high-water mark hold less than a budget in all; until they drain, the network's
next window takes in what changes meanwhile (a later change of a peer replaces the earlier), so
slow readers get fewer, fuller rounds instead of a queue. A connection whose queue has not
shrunk for `STUCK` seconds stops counting: a few nodes that never read must not hold up every
other node (their own bound, and the keepalive, deal with them), while nodes that read slowly,
however long they stay above their high-water mark, keep counting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STUCK = 10.0
"""Seconds without its queue shrinking after which a connection no longer holds back the fan-out."""
BACKLOG_WAIT = 0.1
"""Seconds the fan-out waits before it looks at a full backlog again."""


@dataclass
class _Queue:
    size: int
    """Bytes queued when last looked at."""
    progress: float
    """When the queue was last seen shrinking (or went above its high-water mark)."""


class WriteBacklog:
    """The connections above their high-water mark, and when each last read some of its queue."""

    def __init__(self, budget: int, stuck: float = STUCK) -> None:
        self.budget = budget
        self.stuck = stuck
        self._queues: dict[Any, _Queue] = {}
        self.waits = 0
        """Slices held back because the backlog was full."""

    def paused(self, conn: Any, now: float) -> None:
        """`conn`'s write buffer went above its high-water mark."""
        if conn not in self._queues:
            self._queues[conn] = _Queue(conn.transport.get_write_buffer_size(), now)

    def resumed(self, conn: Any) -> None:
        """`conn`'s write buffer went below its low-water mark, or the connection ended."""
        self._queues.pop(conn, None)

    def queued(self, now: float) -> int:
        """Bytes queued in the connections that count (whose queue shrank within `stuck`)."""
        total = 0
        for conn, queue in self._queues.items():
            size = conn.transport.get_write_buffer_size()
            if size < queue.size:
                queue.progress = now
            queue.size = size
            if queue.progress + self.stuck > now:
                total += size
        return total

    def full(self, now: float) -> bool:
        """Whether the fan-out must wait before its next slice (and count that it did)."""
        if not self._queues or self.queued(now) < self.budget:
            return False
        self.waits += 1
        return True
