"""How many peer-map bytes the coord lets sit in its write buffers at once.

A node that registers gets its whole peer map: about 3 MB at 10,000 nodes. After a restart
every node registers within seconds, and their maps written at once sat in the server's write
buffers (6.3 GiB of RSS) while the nodes, slowed by reading them, sent their handshakes late and
were dropped at the deadline. Now each registration's map waits here for room: maps start in
the order their nodes registered while the bytes of maps not yet drained stay below the budget,
and a map's bytes are given back once its connection's write buffer has drained (or the
connection ended). A map is built only when it starts, from the network as it is then.

Sans-IO: the shell says what was written and what drained.
"""

from __future__ import annotations

from typing import Hashable


class MapBudget:
    """Connections waiting for their peer map, in order, and the map bytes in flight."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        """Map bytes in flight beyond which no further map starts (one map may pass it)."""
        self.in_flight = 0
        self.peak = 0
        """The most map bytes that were in flight at once."""
        self._waiting: dict[Hashable, None] = {}
        self._sent: dict[Hashable, int] = {}

    def wait(self, conn_id: Hashable) -> None:
        """`conn_id` registered: its map waits for room."""
        self._waiting[conn_id] = None

    def waiting(self, conn_id: Hashable) -> bool:
        return conn_id in self._waiting

    def __len__(self) -> int:
        """Connections waiting."""
        return len(self._waiting)

    def next(self) -> Hashable | None:
        """The connection whose map may start now (it no longer waits), or None."""
        if not self._waiting or self.in_flight >= self.budget:
            return None
        conn_id = next(iter(self._waiting))
        del self._waiting[conn_id]
        return conn_id

    def sent(self, conn_id: Hashable, size: int) -> None:
        """`size` bytes of map were written to `conn_id` and sit in its buffer until `drained`."""
        self._sent[conn_id] = self._sent.get(conn_id, 0) + size
        self.in_flight += size
        self.peak = max(self.peak, self.in_flight)

    def drained(self, conn_id: Hashable) -> None:
        """`conn_id`'s write buffer drained: its map bytes are no longer held."""
        self.in_flight -= self._sent.pop(conn_id, 0)

    def forget(self, conn_id: Hashable) -> None:
        """`conn_id` ended: it waits no longer, and its bytes are released."""
        self._waiting.pop(conn_id, None)
        self.drained(conn_id)
