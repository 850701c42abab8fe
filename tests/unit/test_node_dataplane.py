"""The data path drops and counts anything it cannot use; it never raises."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import wire
from meshvpn.control import messages as m
from meshvpn.node.core import NodeCore
from meshvpn.node.datapath.dataplane import DataPlane
from meshvpn.wire import Endpoint

SRC = Endpoint("192.0.2.9", 4000)
PEER_KEY = bytes(range(32, 64))


def plane() -> DataPlane:
    core = NodeCore(bytes(range(1, 33)), lambda n: bytes(n))
    info = m.PeerInfo(key=PEER_KEY, name="peer", address="100.64.0.2", online=True)
    core.coord_message(m.PeerMap(peers=(info,)), 0.0)
    return DataPlane(core)


def total_drops(dp: DataPlane) -> int:
    peer_drops = sum(sum(p.counters.drops.values()) for p in dp.core.peers)
    return sum(dp.drops.values()) + sum(dp.core.drops.values()) + peer_drops


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_inbound_garbage_is_counted_never_raised(datagrams):
    dp = plane()
    assert dp.inbound([(d, SRC) for d in datagrams], 1.0) == []
    assert total_drops(dp) == len(datagrams)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([wire.MessageType.DATA, wire.MessageType.KEEPALIVE, wire.MessageType.RELAY]),
       st.binary(min_size=0, max_size=100))
def test_transport_lookalikes_are_dropped(kind, body):
    dp = plane()
    datagram = wire.header(kind) + body
    assert dp.inbound([(datagram, SRC)], 1.0) == []
    assert total_drops(dp) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=8))
def test_outbound_garbage_never_raises(packets):
    dp = plane()
    assert dp.outbound(packets, 1.0) == {}


def test_outbound_without_a_peer_or_a_session():
    dp = plane()
    to_nobody = struct.pack("!BB10x4s4s", 0x45, 0, bytes([100, 64, 0, 1]), bytes([100, 64, 0, 99]))
    to_peer = struct.pack("!BB10x4s4s", 0x45, 0, bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2]))
    assert dp.outbound([to_nobody, to_peer], 1.0) == {}
    assert dp.drops["no peer"] == 1
    peer = dp.core.peers.find("peer")
    assert list(peer.pending) == [to_peer] and dp.core_touched
