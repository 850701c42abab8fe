"""Which fields of each peer changed since the fan-out last announced it: deltas of format 2.

At 10,000 nodes and 1 % of them changing endpoints every second, whole peer infos in every delta
came to some 300 MB/s of JSON to seal and send, and the coord fell behind by half a minute. A
node already holds every peer it was told about, so for those a delta carries only the peer's
key and the fields that changed (`messages.PEER_CHANGE`): for an endpoint change, a third of
the bytes. Nodes whose format is older (`Register.delta_version`) still get whole infos.

`PeerStates` keeps the last info the fan-out took in for each peer. The fields a window names
for a peer are every field that changed in any of its steps, not only between its first and
last state: a node whose map was built in the middle of a window holds one of the states in
between, and a field that changed and changed back must still be set. A peer the fan-out has
not announced since it started (or since it was removed) goes whole, as a node may not have it.

Sans-IO: no clock, no sockets.
"""

from __future__ import annotations

import json
from dataclasses import fields

from meshvpn.control import messages as m

FIELDS = tuple(f.name for f in fields(m.PeerInfo) if f.name != "key")
"""The fields a change may name, in the order they travel."""


def changed_fields(old: m.PeerInfo, new: m.PeerInfo) -> frozenset[str]:
    """The fields whose values differ between `old` and `new`."""
    return frozenset(name for name in FIELDS if getattr(old, name) != getattr(new, name))


class PeerStates:
    """The latest info announced of each peer, by key."""

    def __init__(self) -> None:
        self._latest: dict[bytes, m.PeerInfo] = {}

    def note(self, info: m.PeerInfo) -> frozenset[str] | None:
        """Take `info` as the peer's latest; the fields it changed, or None when the peer was
        not announced before (nodes get it whole)."""
        old = self._latest.get(info.key)
        self._latest[info.key] = info
        return None if old is None else changed_fields(old, info)

    def forget(self, key: bytes) -> None:
        """The peer was removed: if it comes back, nodes get it whole."""
        self._latest.pop(key, None)

    def __len__(self) -> int:
        return len(self._latest)


def change_json(info: m.PeerInfo, names: frozenset[str]) -> bytes:
    """The compact JSON of `info`'s key and the fields in `names`, as a `peer_delta` carries it
    in `changed` (a cleared field as null)."""
    patch = m.Patch(info.key, tuple((name, getattr(info, name)) for name in FIELDS if name in names))
    return json.dumps(m.PEER_CHANGE.dump(patch), separators=(",", ":"), allow_nan=False).encode()
