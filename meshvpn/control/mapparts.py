"""A peer map that came in parts: the node's side of the rule the coord splits maps by.

A map too large for one frame (`meshvpn.coord.peermap` splits it) travels as parts 0, 1, ...
with ``last`` on the final one; a map that fits one frame has no numbering. The node replaces
its view of the network only once the map is whole. Part of the control schema, so the node
needs nothing of the coord package to read it.
"""

from __future__ import annotations

from meshvpn.control import messages as m


class PeerMapAssembler:
    """The node's side: collects a map's parts and hands the map out only once it is whole.

    Parts come in order on one channel; a part out of sequence (a part lost to a reconnect)
    discards the partial map, and the next registration brings a whole one."""

    def __init__(self) -> None:
        self._peers: list[m.PeerInfo] | None = None
        self._next = 0

    def add(self, message: m.PeerMap) -> tuple[m.PeerInfo, ...] | None:
        """Every peer of the map once `message` completes it, else None."""
        if message.part is None:
            self._peers = None
            return message.peers
        if message.part == 0:
            self._peers = []
        elif self._peers is None or message.part != self._next:
            self._peers = None
            return None
        self._peers.extend(message.peers)
        self._next = message.part + 1
        if not message.last:
            return None
        peers, self._peers = tuple(self._peers), None
        return peers
