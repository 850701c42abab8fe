"""Peer maps from cached blocks: after any sequence of joins, changes and removals the frames
for any viewer are exactly the map built peer by peer, and a change rebuilds only its block."""

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.control import messages as m
from meshvpn.coord.mapcache import BLOCK, MapBlocks
from meshvpn.coord.peermap import PeerEntry, peer_map_parts


def info(n: int, version: int = 0) -> m.PeerInfo:
    return m.PeerInfo(n.to_bytes(32, "big"), f"node-{n}", f"10.0.{n >> 8}.{n & 255}", bool(version % 2),
                      (m.Endpoint("192.168.1.10", 1000 + version),))


class Model:
    """What the roster knows: each node's version and whether peers may see it."""

    def __init__(self) -> None:
        self.blocks = MapBlocks()
        self.nodes: dict[int, int] = {}
        self.hidden: set[int] = set()
        self.rendered = 0

    def render(self, key: bytes) -> str | None:
        n = int.from_bytes(key, "big")
        self.rendered += 1
        return None if n in self.hidden else PeerEntry.of(info(n, self.nodes[n])).json

    def expected(self, viewer: int, part_bytes: int) -> list[bytes]:
        entries = [PeerEntry.of(info(n, v)) for n, v in self.nodes.items() if n != viewer and n not in self.hidden]
        return [frame for _, frame in peer_map_parts(entries, part_bytes)]


OPS = st.lists(st.tuples(st.sampled_from(["add", "change", "hide", "remove"]), st.integers(0, 300)), max_size=400)


@settings(max_examples=60, deadline=None)
@given(OPS, st.integers(0, 300), st.sampled_from([300, 2000, 256 << 10]))
def test_frames_are_the_map_built_peer_by_peer(ops, viewer, part_bytes):
    model = Model()
    for op, n in ops:
        key = n.to_bytes(32, "big")
        if op == "add" or (op == "change" and n in model.nodes):
            model.nodes[n] = model.nodes.get(n, -1) + 1
            model.blocks.add("home", key)
        elif op == "hide" and n in model.nodes:
            model.hidden.add(n)
            model.blocks.touch(key)
        elif op == "remove" and n in model.nodes:
            del model.nodes[n]
            model.hidden.discard(n)
            model.blocks.remove(key)
        if n % 7 == 0:  # maps taken in between: the cache must follow every later change
            model.blocks.frames("home", viewer.to_bytes(32, "big"), model.render, part_bytes)
    frames = model.blocks.frames("home", viewer.to_bytes(32, "big"), model.render, part_bytes)
    assert frames == model.expected(viewer, part_bytes)
    assert [m.decode(frame) for frame in frames]  # each a valid frame


def test_a_change_rebuilds_one_block_and_a_map_renders_only_the_viewer_s_block_anew():
    model = Model()
    for n in range(10 * BLOCK):
        model.nodes[n] = 0
        model.blocks.add("home", n.to_bytes(32, "big"))
    model.blocks.frames("home", bytes([255]) * 32, model.render)  # a viewer outside the network
    model.rendered = 0
    model.nodes[5 * BLOCK] = 1
    model.blocks.add("home", (5 * BLOCK).to_bytes(32, "big"))
    frames = model.blocks.frames("home", (2 * BLOCK).to_bytes(32, "big"), model.render)
    assert model.rendered == 2 * BLOCK - 1  # the changed block, and the viewer's block without it
    assert frames == model.expected(2 * BLOCK, 256 << 10)


def test_other_networks_are_not_in_the_map():
    blocks = MapBlocks()
    blocks.add("home", bytes([1]) * 32)
    blocks.add("work", bytes([2]) * 32)
    (frame,) = blocks.frames("home", bytes([9]) * 32, lambda key: f'"{key[0]}"')
    assert frame == b'{"type":"peer_map","peers":["1"]}'
