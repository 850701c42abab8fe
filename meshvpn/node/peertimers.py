"""Each peer's next deadline in a heap, so the core's timer costs what changed, not how many peers there are.

The core asks for its next deadline after every input, and a node may have 10,000 peers: asking
every peer's machines each time made every input cost as much as the whole peer table. Like
aioquic's ``get_timer``, one answer is kept ready; like Nebula's handshake timer wheel, only the
entries that are due are touched when the timer fires.

Rules:

* A peer's deadline (``deadline(peer)``: the earliest of its machines') and its next look at the
  data path's traffic times (``look(peer)``: the earliest its silence rules could act on traffic
  sent unseen) are computed again only for the peers marked since the last look: ``PeerTable.touched`` (a machine of the core changed the peer)
  and ``PeerTable.trafficked`` (the data path carried traffic for it, which moves a rekey, and
  which the path finders learn only on the timer, see :mod:`meshvpn.node.recovery`). Whatever
  changes a peer without marking it is a bug the brute-force check (``check``) finds.
* Stale heap entries (a peer whose deadline moved, or that left) are dropped when they reach the
  top (lazy deletion); the heap is rebuilt when they outnumber the live ones. A look that is due
  and whose peer's traffic no longer keeps the core watching (``busy_until(peer)``) goes too.
* ``due(now)``: the peers the timer must look at, in the table's order: those due, and every
  marked one (the data path's traffic must reach their path finders). Each counts as touched
  again, since the timer changes it.
"""

from __future__ import annotations

import heapq
import itertools
from operator import attrgetter
from typing import Callable, Generic, Hashable, Iterable, Iterator, Optional, TypeVar

from meshvpn.node.peers import Peer, PeerTable

K = TypeVar("K", bound=Hashable)

_SLACK = 64
"""Stale entries tolerated beyond the live ones before the heap is rebuilt."""


class KeyedHeap(Generic[K]):
    """The smallest value of many keys, each key's value replaceable; stale entries go lazily."""

    def __init__(self) -> None:
        self._heap: list[list] = []
        self._entries: dict[K, list] = {}
        """Key -> its live entry [value, sequence, key]; a heap entry not here is stale."""
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> Optional[float]:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def set(self, key: K, value: Optional[float]) -> None:
        """Give `key` a new value (None: none)."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] == value:
            return
        if value is None:
            self._entries.pop(key, None)
        else:
            entry = [value, next(self._sequence), key]
            self._entries[key] = entry
            heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * len(self._entries) + _SLACK:
            self._heap = list(self._entries.values())
            heapq.heapify(self._heap)

    def top(self) -> Optional[float]:
        """The smallest value, or None when no key has one."""
        heap, entries = self._heap, self._entries
        while heap and entries.get(heap[0][2]) is not heap[0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def top_key(self) -> Optional[K]:
        """The key of the smallest value, or None when no key has one."""
        return None if self.top() is None else self._heap[0][2]

    def pop_until(self, limit: float) -> list[K]:
        """Take out every key whose value is at most `limit`, smallest first."""
        keys = []
        while (value := self.top()) is not None and value <= limit:
            keys.append(heapq.heappop(self._heap)[2])
            del self._entries[keys[-1]]
        return keys


class PeerTimers:
    """Every peer's next deadline and next look at its traffic times, kept current."""

    check = False
    """Compare every answer with the brute-force one over all peers (the tests switch it on)."""

    def __init__(self, peers: PeerTable, deadline: Callable[[Peer], Optional[float]],
                 busy_until: Callable[[Peer], Optional[float]], look: Callable[[Peer], Optional[float]]) -> None:
        self.peers = peers
        self._deadline = deadline
        self._busy_until = busy_until
        self._look = look
        self._deadlines: KeyedHeap[Peer] = KeyedHeap()
        self._looks: KeyedHeap[Peer] = KeyedHeap()

    def get_timer(self) -> Optional[float]:
        """The earliest deadline of any peer."""
        self._refresh()
        deadline = self._deadlines.top()
        if self.check:
            self._check("deadline", deadline, min(_known(map(self._deadline, self.peers)), default=None))
        return deadline

    def next_look(self, after: float) -> Optional[float]:
        """The earliest look of any peer whose look is after `after` (the last look) or whose traffic
        keeps the core watching past it; one at or before `after` means any time now. `after` only grows."""
        self._refresh()
        looks = self._looks
        while (earliest := looks.top()) is not None and earliest <= after:
            peer = looks.top_key()
            if (self._busy_until(peer) or float("-inf")) > after:
                break
            looks.set(peer, None)  # idle since: it is marked again when its traffic moves
        if self.check:
            self._check("look", earliest, min((look for peer in self.peers if (look := self._look(peer)) is not None
                                              and (look > after or (self._busy_until(peer) or look) > after)),
                                             default=None))
        return earliest

    def due(self, now: float) -> list[Peer]:
        """The peers the timer looks at now (due or marked), in table order; all count as touched."""
        marked = self.peers.touched
        marked |= self.peers.trafficked
        self.peers.trafficked.clear()
        marked.update(self._deadlines.pop_until(now))
        return sorted(marked, key=attrgetter("order"))

    def forget(self, peer: Peer) -> None:
        """The peer left the table."""
        self._deadlines.set(peer, None)
        self._looks.set(peer, None)

    def _refresh(self) -> None:
        touched, trafficked = self.peers.touched, self.peers.trafficked
        for marks in (touched, trafficked):
            for peer in marks:
                self._deadlines.set(peer, self._deadline(peer))
                self._looks.set(peer, self._look(peer))
        if self.peers.changed is not None:  # the native tables look at them too (`native_tables`)
            self.peers.changed |= touched
        touched.clear()

    def _check(self, what: str, kept: Optional[float], brute: Optional[float]) -> None:
        if kept != brute:
            stale = [peer.name for peer in self.peers if self._deadline(peer) != self._deadlines.get(peer)]
            raise AssertionError(f"peer timers kept {what} {kept}, the peers say {brute} (stale deadlines: {stale})")


def _known(values: Iterable[Optional[float]]) -> Iterator[float]:
    return (value for value in values if value is not None)
