"""Every peer's name and overlay address in sorted order, kept in step with the peer table.

The node announces who is in the network in this order (``Node._note_peer_map``, the DNS
responder's source) whenever a peer joins, leaves, or is renamed or readdressed. Sorting every
peer's pair again at each such change cost the node 7-10 ms at 10,000 peers; the table
(`meshvpn.node.peers`) puts each change here instead, a binary search and a move of the list's
tail, and the announcement reads the pairs as they are.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Iterator

NamePair = tuple[str, str]
"""(name, overlay address) of one peer."""


class SortedNames:
    """The (name, overlay address) pairs of the peers in the table, sorted as `sorted` would; a
    pair twice when two peers share both."""

    def __init__(self) -> None:
        self._pairs: list[NamePair] = []

    def add(self, pair: NamePair) -> None:
        insort(self._pairs, pair)

    def remove(self, pair: NamePair) -> None:
        """Forget one peer's pair; a pair that is not here is a bookkeeping error (ValueError)."""
        pairs = self._pairs
        index = bisect_left(pairs, pair)
        if index == len(pairs) or pairs[index] != pair:
            raise ValueError(f"no peer named {pair[0]!r} at {pair[1]} to remove")
        del pairs[index]

    def __iter__(self) -> Iterator[NamePair]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)
