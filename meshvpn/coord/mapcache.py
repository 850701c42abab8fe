"""Peer maps from pre-joined blocks of peers, so that a join costs O(peers / BLOCK) steps.

A joining node gets every visible peer of its network. Each peer's JSON is cached
(`PeerEntry`), but joining those strings for every join still walked every peer in Python:
O(n²) steps for a network coming up, most of the coord's CPU at 10,000 nodes. Here a network's
nodes sit in blocks of `BLOCK`, in the order they were first indexed, and each block keeps its
visible peers' JSON joined into `Chunk`s, built again only after one of its nodes changed. A map
is the blocks' chunks joined into frames (`peermap.map_frames`); only the viewer's own block is
joined anew, without the viewer.

Sans-IO: the caller says what changed (`add`, `touch`, `remove`) and renders a peer on demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from meshvpn.control import messages as m
from meshvpn.coord.peermap import PART_BYTES, Chunk, map_frames

BLOCK = 128
"""Nodes per block: a change costs one block's join (BLOCK entries), a map n / BLOCK chunks."""

Render = Callable[[bytes], "str | None"]
"""A node's peer JSON by its key, or None when its peers must not see it (unapproved, revoked)."""


@dataclass
class _Block:
    keys: list[bytes] = field(default_factory=list)
    chunks: list[Chunk] | None = None
    """The visible peers' JSON, at most `part_bytes` per chunk; None once a node changed."""
    part_bytes: int = 0
    """The part size `chunks` were cut for."""


class MapBlocks:
    """Every network's nodes in blocks, each with its peers' JSON joined once per change."""

    def __init__(self) -> None:
        self._networks: dict[str, list[_Block]] = {}
        self._where: dict[bytes, _Block] = {}

    def add(self, network: str, key: bytes) -> None:
        """`key` is indexed in `network` (new, or changed: then it keeps its block)."""
        block = self._where.get(key)
        if block is None:
            blocks = self._networks.setdefault(network, [])
            if not blocks or len(blocks[-1].keys) >= BLOCK:
                blocks.append(_Block())
            block = blocks[-1]
            block.keys.append(key)
            self._where[key] = block
        block.chunks = None

    def touch(self, key: bytes) -> None:
        """What `key`'s peers see of it changed."""
        block = self._where.get(key)
        if block is not None:
            block.chunks = None

    def remove(self, key: bytes) -> None:
        block = self._where.pop(key, None)
        if block is not None:
            block.keys.remove(key)
            block.chunks = None

    def frames(self, network: str, viewer: bytes, render: Render, part_bytes: int = PART_BYTES) -> list[bytes]:
        """The encoded `peer_map` frames `viewer` gets: every node of `network` that `render`
        shows, but the viewer itself."""
        chunks: list[Chunk] = []
        own = self._where.get(viewer)
        for block in self._networks.get(network, ()):
            if block is own:
                chunks += _chunks([key for key in block.keys if key != viewer], render, part_bytes)
                continue
            if block.chunks is None or block.part_bytes != part_bytes:
                block.chunks, block.part_bytes = _chunks(block.keys, render, part_bytes), part_bytes
            chunks += block.chunks
        return map_frames(chunks, part_bytes)


def _chunks(keys: list[bytes], render: Render, part_bytes: int) -> list[Chunk]:
    """The JSON of the shown nodes among `keys`, cut into chunks of at most `part_bytes` (and
    `MAX_PEERS`), so that a small part size still splits maps peer by peer."""
    chunks: list[Chunk] = []
    run: list[str] = []
    size = 0
    for key in keys:
        json = render(key)
        if json is None:
            continue
        if run and (size + len(json) + 1 > part_bytes or len(run) == m.MAX_PEERS):
            chunks.append(Chunk(",".join(run), len(run)))
            run, size = [], 0
        run.append(json)
        size += len(json) + 1
    if run:
        chunks.append(Chunk(",".join(run), len(run)))
    return chunks
