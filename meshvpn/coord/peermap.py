"""Peer maps of any size: the server splits them into frames, the node puts them back together.

One `peer_map` frame used to carry the whole map, which capped a network at the channel's 1 MiB
frame (about 3,400 peers). Now a map that fits one part still travels exactly as before (no
`part`, no `last`), so older nodes keep working; a larger one travels as parts 0, 1, ... with
`last: true` on the final one, and the node replaces its view of the network only then.

The server keeps each peer's JSON in a `PeerEntry` and builds frames by joining those strings,
so a peer is encoded once per change rather than once per recipient.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from meshvpn.control import messages as m

PART_BYTES = 256 << 10
"""Peer JSON in one part: far below the 1 MiB frame limit, and one part is quick to seal and send."""


@dataclass(frozen=True)
class PeerEntry:
    """One peer as every node of its network sees it, with its JSON encoded once."""

    info: m.PeerInfo
    json: str
    """`info` as compact JSON, exactly as `messages.encode` writes it inside a message."""

    @classmethod
    def of(cls, info: m.PeerInfo) -> PeerEntry:
        return cls(info, json.dumps(info.to_json(), separators=(",", ":"), allow_nan=False))


def peer_update(entry: PeerEntry) -> tuple[m.PeerUpdate, bytes]:
    """The `peer_update` announcing `entry`, and its encoded frame."""
    return m.PeerUpdate(entry.info), f'{{"type":"peer_update","peer":{entry.json}}}'.encode()


def peer_map_parts(entries: Sequence[PeerEntry], part_bytes: int = PART_BYTES) -> list[tuple[m.PeerMap, bytes]]:
    """The peer map of `entries` as (message, encoded frame) pairs: one whole map if it fits one
    part of `part_bytes` (and `MAX_PEERS`), else numbered parts in order."""
    groups: list[list[PeerEntry]] = [[]]
    size = 0
    for entry in entries:
        cost = len(entry.json) + 1
        if groups[-1] and (size + cost > part_bytes or len(groups[-1]) == m.MAX_PEERS):
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += cost
    if len(groups) == 1:
        return [_frame(groups[0], None, None)]
    return [_frame(group, index, index == len(groups) - 1) for index, group in enumerate(groups)]


def _frame(group: list[PeerEntry], part: int | None, last: bool | None) -> tuple[m.PeerMap, bytes]:
    message = m.PeerMap(tuple(entry.info for entry in group), part=part, last=last)
    peers = ",".join(entry.json for entry in group)
    numbering = "" if part is None else f',"part":{part},"last":{"true" if last else "false"}'
    return message, f'{{"type":"peer_map","peers":[{peers}]{numbering}}}'.encode()


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
