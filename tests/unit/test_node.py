"""The node as one object: a peer is added in one step and removed in one step, leaving nothing behind."""

import random

import pytest

from meshvpn.control import messages as m
from meshvpn.node.events import PeerDown, TcpAbort, TcpConnect, TcpPathChanged, TcpWrite
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.tcp.core import TcpEndpoint
from meshvpn.node.transports import MAIN_SOCKET, PunchedStream
from meshvpn.sim.nodes import ALICE_AT, BOB_AT, NETWORK, MemoryNode, alice_and_bob, ip_packet, seeded


def tcp_info(n: MemoryNode) -> m.PeerInfo:
    """The peer as the coord sees it behind a site that drops UDP: only its TCP mapping is of use."""
    return m.PeerInfo(key=n.public, name=n.name, address=n.address, online=True,
                      public_tcp=m.Endpoint(*n.endpoint))


def welcome(n: MemoryNode, other: MemoryNode) -> None:
    n.from_coord(m.Registered(node_key=n.public, name=n.name, address=n.address, network=NETWORK), 0.0)
    n.from_coord(m.PeerMap(peers=(tcp_info(other),)), 0.0)


def taken(n: MemoryNode, kind) -> list:
    out = [o for o in n.other_out if isinstance(o, kind)]
    n.other_out = [o for o in n.other_out if not isinstance(o, kind)]
    return out


def move_bytes(a: MemoryNode, a_conn: int, b: MemoryNode, b_conn: int, now: float) -> None:
    """Carry every TCP write between the two connections until both are quiet."""
    for _ in range(10):
        moved = False
        for src, src_conn, dst, dst_conn in ((a, a_conn, b, b_conn), (b, b_conn, a, a_conn)):
            for write in taken(src, TcpWrite):
                assert write.conn_id == src_conn
                dst.node.receive_tcp(dst_conn, write.data, now)
                dst.drain(now)
                moved = True
        if not moved:
            return
    raise AssertionError("bytes still flowing")


@pytest.fixture
def tcp_pair():
    """Two nodes with a punched TCP path between them and no UDP path."""
    a, b = seeded(random.Random, 1, "alice", "100.64.0.1", ALICE_AT), seeded(random.Random, 2, "bob", "100.64.0.2", BOB_AT)
    for n, other in ((a, b), (b, a)):
        n.node.enable_tcp_punch()
        welcome(n, other)
    a.from_coord(m.Punch(peer_key=b.public, endpoints=()), 0.0)
    b.from_coord(m.Punch(peer_key=a.public, endpoints=()), 0.0)
    (connect,) = taken(a, TcpConnect)
    taken(b, TcpConnect)  # bob's own attempt, which alice's connection overtakes
    assert connect.endpoint == BOB_AT
    a.node.tcp_connected(connect.conn_id, 0.0)
    a.drain(0.0)
    b_conn = b.node.tcp_accepted(ALICE_AT, 0.0)
    b.drain(0.0)
    move_bytes(a, connect.conn_id, b, b_conn, 0.0)
    return a, connect.conn_id, b, b_conn


def test_a_punched_tcp_path_becomes_the_peers_route(tcp_pair):
    a, a_conn, b, b_conn = tcp_pair
    for n, other, conn in ((a, b, a_conn), (b, a, b_conn)):
        peer = n.peers.by_key[other.public]
        assert peer.route is not None and peer.route.path.kind is PathKind.TCP
        assert peer.route.transport == PunchedStream(conn) == n.node.transport_for(peer.route.endpoint)
        assert any(isinstance(e, TcpPathChanged) and e.endpoint is not None for e in n.events)


def test_peer_remove_ends_its_tcp_path_and_leaves_nothing_behind(tcp_pair):
    a, a_conn, b, _ = tcp_pair
    endpoint = a.peers.by_key[b.public].route.endpoint
    a.from_coord(m.PeerRemove(key=b.public), 1.0)
    assert a.peers.by_key == {} and a.peers.by_overlay == {} and a.peers.by_index == {}
    assert a.node.tcp.peer_keys() == set() and a.node.tcp.status() == {}
    assert a.node.tcp.path_conn(TcpEndpoint(*endpoint)) is None
    assert [abort.conn_id for abort in taken(a, TcpAbort)] == [a_conn]
    assert [e.reason for e in a.events if isinstance(e, PeerDown)] == ["removed by the coord"]
    assert a.node.status(1.0)["peers"] == [] and a.node.status(1.0)["self"]["tcp_punch"] == {"peers": {}}
    assert a.node.lan.get_timer() is not None, "the node stays its TUN's IGMP querier"
    assert a.node.get_timer() == a.node.lan.get_timer(), \
        "no timer of the removed peer (TCP keepalive, punches) is left, only the querier's"


def test_leaving_the_peer_map_ends_the_tcp_path_too(tcp_pair):
    a, a_conn, b, _ = tcp_pair
    a.from_coord(m.PeerMap(peers=()), 1.0)
    assert a.peers.by_key == {} and a.node.tcp.peer_keys() == set()
    assert [abort.conn_id for abort in taken(a, TcpAbort)] == [a_conn]


def test_a_peer_added_again_after_removal_starts_from_nothing(tcp_pair):
    a, _, b, _ = tcp_pair
    a.from_coord(m.PeerRemove(key=b.public), 1.0)
    a.from_coord(m.PeerUpdate(peer=tcp_info(b)), 2.0)
    peer = a.peers.by_key[b.public]
    assert peer.route is None and peer.ring.current is None and peer.counters.handshakes == 0
    assert a.node.tcp.peer_keys() == set()


def test_udp_peers_send_on_the_main_socket():
    a, b, wire = alice_and_bob(random.Random)
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    route = a.peers.by_key[b.public].route
    assert route.path.kind is PathKind.DIRECT and route.transport == MAIN_SOCKET
    assert [p[20:] for p in b.tun] == [b"hello"]
