"""Peer maps in parts: frames built from cached JSON are exactly what `encode` writes, the parts
cover the map in order under the size limit, and the node's assembler yields only whole maps."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.control import messages as m
from meshvpn.control.mapparts import PeerMapAssembler
from meshvpn.coord.peermap import PeerEntry, peer_delta_frames, peer_map_parts, peer_update


def info(n: int, name: str = "", online: bool = True) -> m.PeerInfo:
    return m.PeerInfo(
        key=n.to_bytes(32, "big"),
        name=name or f"node-{n}",
        address=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
        online=online,
        local_endpoints=(m.Endpoint("192.168.1.10", 41641),),
        public_endpoint=m.Endpoint("198.51.100.1", 1 + n % 65535) if online else None,
        last_seen=1_700_000_000.0 + n,
    )


FRAME_OVERHEAD = len('{"type":"peer_map","peers":[],"part":2147483647,"last":false}')

ENTRIES = st.lists(
    st.builds(info, st.integers(0, 1 << 24), st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=40).filter(str.isprintable),
              st.booleans()),
    max_size=60,
).map(lambda infos: [PeerEntry.of(i) for i in infos])


@settings(max_examples=200, deadline=None)
@given(ENTRIES, st.integers(200, 4000))
def test_parts_are_exact_frames_that_cover_the_map_in_order(entries, part_bytes):
    parts = peer_map_parts(entries, part_bytes)
    for message, payload in parts:
        assert payload == m.encode(message)
        assert m.decode(payload) == message
        assert len(message.peers) == 1 or len(payload) <= part_bytes + FRAME_OVERHEAD
    assert [p for message, _ in parts for p in message.peers] == [e.info for e in entries]
    if len(parts) == 1:
        assert parts[0][0].part is None and parts[0][0].last is None
    else:
        assert [message.part for message, _ in parts] == list(range(len(parts)))
        assert [message.last for message, _ in parts] == [False] * (len(parts) - 1) + [True]


@settings(max_examples=200, deadline=None)
@given(ENTRIES, st.lists(st.binary(min_size=32, max_size=32), max_size=30), st.integers(200, 4000))
def test_delta_frames_reuse_the_update_json_and_cover_every_change_under_the_size_limit(entries, removed, part_bytes):
    frames = peer_delta_frames([peer_update(e)[1] for e in entries], removed, part_bytes)
    deltas = [m.decode(frame) for frame in frames]
    assert all(isinstance(delta, m.PeerDelta) for delta in deltas)
    assert [p for delta in deltas for p in delta.peers] == [e.info for e in entries]
    assert [k for delta in deltas for k in delta.removed] == removed
    overhead = len('{"type":"peer_delta","peers":[],"removed":[]}')
    for frame, delta in zip(frames, deltas):
        assert len(delta.peers) + len(delta.removed) == 1 or len(frame) <= part_bytes + overhead
        assert frame == m.encode(delta)


def test_an_empty_delta_is_one_empty_frame():
    assert [m.decode(f) for f in peer_delta_frames([], [])] == [m.PeerDelta()]


def test_a_map_that_fits_one_frame_is_sent_as_before_parts_existed():
    (message, payload), = peer_map_parts([PeerEntry.of(info(1)), PeerEntry.of(info(2))])
    assert set(json.loads(payload)) == {"type", "peers"}
    assert message == m.PeerMap((info(1), info(2)))


def test_no_part_holds_more_than_max_peers():
    entries = [PeerEntry.of(info(n)) for n in range(m.MAX_PEERS + 1)]
    parts = peer_map_parts(entries, part_bytes=1 << 30)
    assert [len(message.peers) for message, _ in parts] == [m.MAX_PEERS, 1]


def test_a_ten_thousand_peer_map_fits_the_frame_limit():
    parts = peer_map_parts([PeerEntry.of(info(n)) for n in range(10_000)])
    assert len(parts) > 1 and max(len(payload) for _, payload in parts) < 1 << 20


def test_peer_update_frame_is_exact():
    message, payload = peer_update(PeerEntry.of(info(7, "ünïcode")))
    assert message == m.PeerUpdate(info(7, "ünïcode")) and payload == m.encode(message)


def parts_of(count: int, part_bytes: int = 400) -> list[m.PeerMap]:
    return [message for message, _ in peer_map_parts([PeerEntry.of(info(n)) for n in range(count)], part_bytes)]


def test_assembler_hands_out_the_map_only_when_the_last_part_arrives():
    parts = parts_of(6)
    assert len(parts) >= 3
    assembler = PeerMapAssembler()
    assert [assembler.add(part) for part in parts[:-1]] == [None] * (len(parts) - 1)
    assert assembler.add(parts[-1]) == tuple(info(n) for n in range(6))


def test_assembler_passes_whole_maps_through_and_drops_a_broken_sequence():
    assembler = PeerMapAssembler()
    parts = parts_of(6)
    assembler.add(parts[0])
    assert assembler.add(parts[2]) is None
    assert assembler.add(parts[-1]) is None, "a map with a missing part is never handed out"
    assert assembler.add(m.PeerMap((info(1),))) == (info(1),)
    assembler.add(parts[0])
    assert [assembler.add(part) for part in parts][-1] == tuple(info(n) for n in range(6)), "part 0 starts afresh"
