"""Peer maps of any size: the server splits them into frames (the node puts them back together
with `meshvpn.control.mapparts`).

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
from meshvpn.keys import encode_key

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


_UPDATE_HEAD = '{"type":"peer_update","peer":'


def peer_update(entry: PeerEntry) -> tuple[m.PeerUpdate, bytes]:
    """The `peer_update` announcing `entry`, and its encoded frame."""
    return m.PeerUpdate(entry.info), f"{_UPDATE_HEAD}{entry.json}}}".encode()


def peer_map_parts(entries: Sequence[PeerEntry], part_bytes: int = PART_BYTES) -> list[tuple[m.PeerMap, bytes]]:
    """The peer map of `entries` as (message, encoded frame) pairs: one whole map if it fits one
    part of `part_bytes` (and `MAX_PEERS`), else numbered parts in order."""
    runs = _split([len(e.json) + 1 for e in entries], part_bytes)
    frames = map_frames([Chunk(",".join(e.json for e in entries[start:end]), end - start) for start, end in runs],
                        part_bytes)
    return [(m.PeerMap(tuple(e.info for e in entries[start:end]), part=part, last=last), frame)
            for (start, end), (part, last, frame) in zip(runs, _numbered(frames))]


@dataclass(frozen=True)
class Chunk:
    """Several peers' JSON, comma-joined, ready to go into a `peer_map` frame as it is."""

    json: str
    count: int
    """Peers in `json`."""


def map_frames(chunks: Sequence[Chunk], part_bytes: int = PART_BYTES) -> list[bytes]:
    """The encoded `peer_map` frames carrying `chunks` in order: consecutive chunks share a part
    while it stays within `part_bytes` of JSON and `MAX_PEERS`; one frame without numbering if
    everything fits one part, else parts 0, 1, ... with `last` on the final one."""
    chunks = [chunk for chunk in chunks if chunk.count]
    groups: list[list[Chunk]] = [[]]
    size = count = 0
    for chunk in chunks:
        if groups[-1] and (size + len(chunk.json) + 1 > part_bytes or count + chunk.count > m.MAX_PEERS):
            groups.append([])
            size = count = 0
        groups[-1].append(chunk)
        size += len(chunk.json) + 1
        count += chunk.count
    if len(groups) == 1:
        return [_frame(groups[0], None, None)]
    return [_frame(group, index, index == len(groups) - 1) for index, group in enumerate(groups)]


def _numbered(frames: list[bytes]) -> list[tuple[int | None, bool | None, bytes]]:
    if len(frames) == 1:
        return [(None, None, frames[0])]
    return [(index, index == len(frames) - 1, frame) for index, frame in enumerate(frames)]


def peer_delta_frames(updates: Sequence[bytes], removed: Sequence[bytes], part_bytes: int = PART_BYTES,
                      changes: Sequence[bytes] = ()) -> list[bytes]:
    """`peer_delta` frames carrying `updates` (`peer_update` frames as `peer_update` encodes them,
    whose peer JSON is reused as it is), the field-level `changes` (JSON as
    `peerchanges.change_json` writes it; format 2, absent from frames without any) and the
    `removed` keys; one frame per `part_bytes` of JSON (and `MAX_PEERS` of each list), each a
    complete delta the node may apply on its own."""
    head = len(_UPDATE_HEAD)
    items = [(_PEERS, frame[head:-1]) for frame in updates]
    items += [(_CHANGED, json) for json in changes]
    items += [(_REMOVED, b'"' + encode_key(key).encode() + b'"') for key in removed]
    frames = []
    for start, end in _split([len(json) + 1 for _, json in items], part_bytes):
        lists = {kind: b",".join(json for of, json in items[start:end] if of == kind) for kind in _KINDS}
        changed = b',"changed":[' + lists[_CHANGED] + b"]" if lists[_CHANGED] else b""
        frames.append(b'{"type":"peer_delta","peers":[' + lists[_PEERS] + b'],"removed":[' + lists[_REMOVED] + b"]"
                      + changed + b"}")
    return frames


_PEERS, _CHANGED, _REMOVED = range(3)
_KINDS = (_PEERS, _CHANGED, _REMOVED)


def _split(costs: Sequence[int], part_bytes: int) -> list[tuple[int, int]]:
    """Index ranges cutting `costs` into runs of at most `part_bytes` and `MAX_PEERS` items (a
    single larger item gets a run of its own); at least one run, perhaps empty."""
    runs: list[tuple[int, int]] = []
    start, size = 0, 0
    for index, cost in enumerate(costs):
        if index > start and (size + cost > part_bytes or index - start == m.MAX_PEERS):
            runs.append((start, index))
            start, size = index, 0
        size += cost
    runs.append((start, len(costs)))
    return runs


def _frame(group: Sequence[Chunk], part: int | None, last: bool | None) -> bytes:
    peers = ",".join(chunk.json for chunk in group)
    numbering = "" if part is None else f',"part":{part},"last":{"true" if last else "false"}'
    return f'{{"type":"peer_map","peers":[{peers}]{numbering}}}'.encode()
