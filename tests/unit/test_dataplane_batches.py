"""The buffer forms of the data path: GSO runs out of SendBuffer, GRO batches opened in place."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import wire
from meshvpn.control import messages as m
from meshvpn.node.core import NodeCore
from meshvpn.node.datapath.dataplane import DataPlane, SendBuffer
from meshvpn.node.events import StunReceived
from meshvpn.node.node import Node
from meshvpn.node.pathfinder import Path, PathKind
from meshvpn.node.peers import Route
from meshvpn.sim.nodes import sized_packet as ip_packet
from meshvpn.noise import SessionKeys
from meshvpn.session import OVERHEAD, Session

A_ADDR, B_ADDR = "100.64.0.1", "100.64.0.2"
A_KEY, B_KEY = bytes([1]) * 32, bytes([2]) * 32
EP_A, EP_B = wire.Endpoint("192.0.2.1", 41641), wire.Endpoint("192.0.2.2", 41641)
RELAY = wire.Endpoint("198.51.100.7", 7500)
NETWORK = m.NetworkInfo(name="batches", cidr="100.64.0.0/24")


def raw(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))


def plane(own_key: bytes, peer_key: bytes, peer_addr: str, send: bytes, recv: bytes, local: int, remote: int,
          route: Route) -> DataPlane:
    """A data path, registered at the other address of A_ADDR/B_ADDR, whose one peer has a session and a route."""
    core = NodeCore(own_key, lambda n: bytes(n))
    own = A_ADDR if peer_addr == B_ADDR else B_ADDR
    core.coord_message(m.Registered(node_key=core.public_key, name="me", address=own, network=NETWORK), 0.0)
    core.coord_message(m.PeerMap(peers=(m.PeerInfo(key=peer_key, name="peer", address=peer_addr, online=True),)), 0.0)
    peer = core.peers.find("peer")
    peer.ring.current = Session(SessionKeys(send, recv, local, remote, peer_key, True), 0.0)
    peer.route = route
    core.peers.index(local, peer)
    return DataPlane(core)


def direct(endpoint):
    return Route(Path(PathKind.DIRECT, endpoint), endpoint)


def planes(a_route=None):
    """a (100.64.0.1) and b (100.64.0.2) with matching sessions, a sending straight to b."""
    a = plane(bytes([7]) * 32, B_KEY, B_ADDR, b"s" * 32, b"r" * 32, 11, 22, a_route or direct(EP_B))
    b = plane(bytes([8]) * 32, A_KEY, A_ADDR, b"r" * 32, b"s" * 32, 22, 11, direct(EP_A))
    return a, b


class Runs:
    """A SendBuffer's sink: each run as (endpoint, bytes, seg_size)."""

    def __init__(self):
        self.runs = []

    def __call__(self, dest, data, seg_size):
        endpoint = dest.endpoint if isinstance(dest, Route) else dest  # the data path's runs go by route
        self.runs.append((endpoint, bytes(data), seg_size))


def test_one_read_of_equal_segments_is_one_run_the_peer_opens_in_place():
    a, b = planes()
    sink = Runs()
    sends = SendBuffer(sink, max_segments=64, max_bytes=65507)
    packets = [ip_packet(A_ADDR, B_ADDR, 1400, n) for n in range(10)] + [ip_packet(A_ADDR, B_ADDR, 300, 99)]
    tun = bytearray(b"".join(packets))
    ranges = [(1400 * n, 1400 * (n + 1)) for n in range(10)] + [(14000, 14300)]
    a.seal_packets(tun, ranges, 1.0, sends)
    assert sink.runs and len(sink.runs) == 1, "the shorter last packet closes and sends the run"
    endpoint, data, seg = sink.runs[0]
    assert endpoint == EP_B and seg == 1400 + OVERHEAD and len(data) == 10 * seg + 300 + OVERHEAD
    buf = bytearray(data) + bytearray(100)
    to_tun = []
    b.open_datagrams(buf, len(data), seg, EP_A, 2.0, to_tun)
    assert [bytes(v) for v in to_tun] == packets
    peer_a, peer_b = a.core.peers.find("peer"), b.core.peers.find("peer")
    assert (peer_a.counters.tx_packets, peer_a.counters.tx_bytes, peer_a.last_tx) == (11, 14300, 1.0)
    assert (peer_b.counters.rx_packets, peer_b.counters.rx_bytes) == (11, 14300)
    assert peer_b.last_rx == 2.0 and peer_b.last_rx_src == EP_A


def test_a_peer_cannot_send_past_us_into_our_lan_or_to_another_peer():
    """Issue 13, finding 7: after decryption only our own address and the broadcast are taken."""
    a, b = planes()
    packets = [ip_packet(A_ADDR, B_ADDR, 200, 1), ip_packet(A_ADDR, "192.168.1.1", 200, 2),
               ip_packet(A_ADDR, "100.64.0.3", 200, 3), ip_packet(A_ADDR, "172.17.0.1", 200, 4),
               ip_packet(A_ADDR, "100.64.0.255", 200, 5)]
    session = a.core.peers.find("peer").ring.current
    delivered = b.inbound([(session.seal(packet), EP_A) for packet in packets], 2.0)
    assert delivered == [packets[0], packets[4]]
    peer = b.core.peers.find("peer")
    assert peer.counters.drops["not_for_me"] == 3 and peer.counters.rx_packets == 2
    assert peer.last_rx == 2.0, "a misdirected packet is still authentic evidence of the path"


def test_runs_break_on_a_larger_message_and_on_the_limits():
    sink = Runs()
    sends = SendBuffer(sink, max_segments=3, max_bytes=1000)
    for size in (100, 100, 100, 100, 200, 200):
        at = sends.place(EP_B, size)
        sends.out[at : at + size] = bytes([size % 251]) * size
        sends.added(size)
    sends.flush()
    assert [(len(data), seg) for _, data, seg in sink.runs] == [(300, 100), (100, 100), (400, 200)]
    sink.runs.clear()
    sends = SendBuffer(sink, max_segments=10, max_bytes=1000)
    for _ in range(6):
        at = sends.place(EP_B, 300)
        sends.added(300)
    assert [len(data) for _, data, _ in sink.runs] == [900, 900], "a fourth 300-byte message would pass 1000 bytes"


def test_another_endpoint_sends_the_open_run_first():
    sink = Runs()
    sends = SendBuffer(sink)
    for endpoint in (EP_A, EP_A, EP_B):
        sends.place(endpoint, 50)
        sends.added(50)
    sends.flush()
    sends.flush()
    assert [(endpoint, len(data)) for endpoint, data, _ in sink.runs] == [(EP_A, 100), (EP_B, 50)]


def test_relayed_route_prefixes_every_message_and_the_envelope_opens():
    prefix = wire.header(wire.MessageType.RELAY) + A_KEY
    a, b = planes(Route(Path(PathKind.RELAY), RELAY, prefix))
    sink = Runs()
    packets = [ip_packet(A_ADDR, B_ADDR, 500, n) for n in range(3)]
    sends = SendBuffer(sink)
    a.seal_packets(b"".join(packets), [(500 * n, 500 * (n + 1)) for n in range(3)], 1.0, sends)
    sends.flush()
    endpoint, data, seg = sink.runs[-1]
    assert endpoint == RELAY and seg == len(prefix) + OVERHEAD + 500
    assert all(data[at : at + len(prefix)] == prefix for at in range(0, len(data), seg))
    to_tun = []
    b.open_datagrams(bytearray(data), len(data), seg, RELAY, 2.0, to_tun)
    assert [bytes(v) for v in to_tun] == packets
    assert b.core.peers.find("peer").last_rx_src is None, "a relayed packet says nothing about a direct path"


def test_spoofed_sources_and_replays_are_dropped_and_counted():
    a, b = planes()
    sink = Runs()
    sends = SendBuffer(sink)
    good, spoofed = ip_packet(A_ADDR, B_ADDR, 120, 1), ip_packet("100.64.0.9", B_ADDR, 120, 2)
    a.seal_packets(good + spoofed, [(0, 120), (120, 240)], 1.0, sends)
    sends.flush()
    _, data, seg = sink.runs[0]
    to_tun = []
    b.open_datagrams(bytearray(data), len(data), seg, EP_A, 2.0, to_tun)
    assert [bytes(v) for v in to_tun] == [good]
    to_tun = []
    b.open_datagrams(bytearray(data), len(data), seg, EP_A, 2.0, to_tun)
    assert to_tun == []
    assert b.core.peers.find("peer").counters.drops == {"spoofed": 1, "failed to open": 2}


def test_packets_without_a_usable_session_go_to_the_core_as_copies():
    a, _ = planes()
    peer = a.core.peers.find("peer")
    peer.ring.current.expires_at = 0.5
    sink = Runs()
    tun = bytearray(ip_packet(A_ADDR, B_ADDR, 60, 3))
    a.seal_packets(tun, [(0, 60)], 1.0, SendBuffer(sink))
    tun[:] = bytes(60)
    assert sink.runs == [] and a.core_touched
    assert list(peer.pending) == [ip_packet(A_ADDR, B_ADDR, 60, 3)]


def test_the_node_takes_each_other_datagram_of_a_batch_in_turn():
    plane = DataPlane(Node(bytes([8]) * 32, lambda n: bytes(n)))
    stun = struct.pack("!HHI", 0x0101, 0, 0x2112A442) + b"t" * 12
    datagrams = bytearray(stun + b"others" * 3 + b"--")
    plane.open_datagrams(datagrams, 40, 20, EP_A, 1.0, [])
    assert plane.core.outputs() == [StunReceived(stun, EP_A)], "STUN goes to the shell's STUN client"
    assert sum(plane.core.drops.values()) == 1, "the rest to the core, which counts it"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 200))
def test_garbage_batches_are_counted_never_raised(data, seg_size):
    _, b = planes()
    to_tun = []
    b.open_datagrams(bytearray(data), len(data), seg_size, EP_A, 1.0, to_tun)
    peer_drops = sum(sum(p.counters.drops.values()) for p in b.core.peers)
    count = max(1, -(-len(data) // seg_size))
    assert to_tun == []
    assert sum(b.drops.values()) + sum(b.core.drops.values()) + peer_drops == count


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(20, 1500), min_size=1, max_size=20))
def test_any_mix_of_sizes_round_trips_through_gso_runs(sizes):
    a, b = planes()
    sink = Runs()
    sends = SendBuffer(sink, max_segments=8, max_bytes=8000)
    packets = [ip_packet(A_ADDR, B_ADDR, size, n) for n, size in enumerate(sizes)]
    for packet in packets:
        a.seal_packets(packet, [(0, len(packet))], 1.0, sends)
    sends.flush()
    received = []
    for _, data, seg in sink.runs:
        assert all(len(data) - at >= seg or at + seg >= len(data) for at in range(0, len(data), seg))
        to_tun = []
        b.open_datagrams(bytearray(data), len(data), seg, EP_A, 2.0, to_tun)
        received += [bytes(v) for v in to_tun]
    assert received == packets


@pytest.mark.parametrize("size", [0, 1, 19])
def test_truncated_ip_packets_are_not_sealed(size):
    a, _ = planes()
    sink = Runs()
    sends = SendBuffer(sink)
    a.seal_packets(bytes([0x45]) + bytes(max(0, size - 1)), [(0, size)], 1.0, sends)
    sends.flush()
    assert sink.runs == [] and a.drops["not ip"] == 1


def test_batches_open_where_they_were_received_in_a_larger_area():
    a, b = planes()
    sink = Runs()
    sends = SendBuffer(sink)
    packets = [ip_packet(A_ADDR, B_ADDR, 200, n) for n in range(4)]
    for packet in packets:
        a.seal_packets(packet, [(0, len(packet))], 1.0, sends)
    sends.flush()
    _, data, seg = sink.runs[0]
    area = bytearray(b"\xaa" * 1000) + bytearray(data) + bytearray(b"\xbb" * 10)
    to_tun = []
    b.open_datagrams(area, len(data), seg, EP_A, 2.0, to_tun, 1000)
    assert [bytes(v) for v in to_tun] == packets
    assert area[:1000] == b"\xaa" * 1000 and area[-10:] == b"\xbb" * 10
