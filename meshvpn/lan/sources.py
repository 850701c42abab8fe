"""The peer map's names and overlay addresses, which the access rules' sources name.

Why apart: the rules (`meshvpn.lan.access`) name peers, so their sources follow the peer map; a
coord message changes one peer or a few, and rebuilding the map from every peer at each one cost
the node O(peers) per message (about 35 ms at 10,000 peers). Here the map is kept per peer key:
a change costs the peers it names. Names are unique in a network; a name two peers hold for a
moment (a rename the coord sends peer by peer) resolves to the one set last, then to the other.
"""

from __future__ import annotations

from typing import Optional


class SourceNames:
    """Name → overlay address as an integer (``addresses``), followed one peer at a time."""

    def __init__(self) -> None:
        self.addresses: dict[str, int] = {}
        """What `AccessFilter.configure` resolves rule sources with."""
        self._of: dict[bytes, tuple[str, int]] = {}
        self._holders: dict[str, dict[bytes, int]] = {}

    def keys(self) -> list[bytes]:
        """The peers that have a name and an address here."""
        return list(self._of)

    def set(self, key: bytes, entry: Optional[tuple[str, int]]) -> set[str]:
        """The peer's (name, address) now (None: it has none, or left); the names whose address changed."""
        old = self._of.get(key)
        if entry == old:
            return set()
        before = [(name, self.addresses.get(name)) for name in {old and old[0], entry and entry[0]} if name]
        if old is not None:
            del self._of[key]
            holders = self._holders[old[0]]
            del holders[key]
            if not holders:
                del self._holders[old[0]]
        if entry is not None:
            self._of[key] = entry
            self._holders.setdefault(entry[0], {})[key] = entry[1]
        for name, _ in before:
            holders = self._holders.get(name)
            if holders:
                self.addresses[name] = next(reversed(holders.values()))
            else:
                self.addresses.pop(name, None)
        return {name for name, address in before if self.addresses.get(name) != address}
