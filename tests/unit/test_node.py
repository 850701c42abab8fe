"""The node as one object: a peer is added in one step and removed in one step, leaving nothing behind."""

import random

import pytest

from meshvpn.control import messages as m
from meshvpn.node.events import PeerDown, TcpAbort, TcpConnect, TcpPathChanged, TcpWrite
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.prediction import Allocation, NatProfile
from meshvpn.node.tcp.core import TcpEndpoint
from meshvpn.node.transports import MAIN_SOCKET, PunchedStream
from meshvpn.sim.nodes import ALICE_AT, BOB_AT, NETWORK, WALL_OFFSET, MemoryNode, alice_and_bob, ip_packet, seeded
from meshvpn.sim.turnserver import turn_answer
from meshvpn.wire import Endpoint


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


def tcp_nodes() -> tuple[MemoryNode, MemoryNode]:
    """Alice and bob, each with a punch port, each knowing the other by its TCP mapping alone."""
    a, b = seeded(random.Random, 1, "alice", "100.64.0.1", ALICE_AT), seeded(random.Random, 2, "bob", "100.64.0.2", BOB_AT)
    for n, other in ((a, b), (b, a)):
        n.node.enable_tcp_punch()
        welcome(n, other)
    return a, b


@pytest.fixture
def tcp_pair():
    """Two nodes with a punched TCP path between them and no UDP path."""
    a, b = tcp_nodes()
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
    assert a.node.status(1.0)["peers"] == [] and a.node.status(1.0)["self"]["tcp_punch"]["peers"] == {}
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


TURN_AT, BOB_RELAYED, OUR_RELAYED = (Endpoint("203.0.113.30", port) for port in (3478, 50002, 50001))


def turn_info(n: MemoryNode) -> m.PeerInfo:
    return m.PeerInfo(key=n.public, name=n.name, address=n.address, online=True, public_tcp=m.Endpoint(*n.endpoint),
                      turn_relayed=(m.Endpoint(*BOB_RELAYED),))


def with_turn_route(a: MemoryNode, b: MemoryNode, now: float, *peer_map: m.Message) -> None:
    """Give `a` a TURN allocation with a channel bound to `b`'s relayed address: a TURN route to b."""
    server = m.TurnServer("turn-1", TURN_AT.host, TURN_AT.port, "100:me", "pw", 100.0)
    a.from_coord(m.Registered(node_key=a.public, name=a.name, address=a.address, network=NETWORK, turn=(server,)), now)
    for msg in peer_map or (m.PeerUpdate(peer=turn_info(b)),):
        a.from_coord(msg, now)
    for _ in range(6):
        for dst, data in [(dst, data) for dst, data in a.collect() if dst == TURN_AT]:
            a.node.receive_datagram(turn_answer(data, OUR_RELAYED)[1], TURN_AT, now)
            a.drain(now)
    assert a.node.turn.routes == {b.public: BOB_RELAYED}


@pytest.mark.parametrize("removal", [lambda key: m.PeerRemove(key=key), lambda key: m.PeerMap(peers=())],
                         ids=["removed by the coord", "left the peer map"])
def test_a_removed_peer_leaves_nothing_in_any_component(tcp_pair, removal):
    a, a_conn, b, _ = tcp_pair
    with_turn_route(a, b, 0.5)
    peer = a.peers.by_key[b.public]
    a.from_coord(m.Punch(peer_key=b.public, endpoints=(m.Endpoint(*BOB_AT),)), 0.5)
    a.tick(0.6)  # the punch's next round probes it, within the peer's probe budget
    a.from_coord(m.Punch(peer_key=b.public, endpoints=(), at=WALL_OFFSET + 5.0), 0.6)  # a punch due later
    a.node.set_nat_profile(NatProfile(False, Allocation.SEQUENTIAL))  # a hard side: re-samples scheduled
    assert a.node.ping(peer, 0.6) is not None
    a.node.packet_from_tun(peer, ip_packet(a.address, b.address), 0.6)  # a handshake in flight
    core, machines = a.node.core, (a.node.core.handshakes, a.node.core.traversal, a.node.core.probes,
                                   a.node.core.probe_budget, a.node.tcp, a.node.turn)
    assert [b.public in machine.peer_keys() for machine in machines] == [True] * len(machines), \
        "the peer has state in every machine"
    assert core.routes.turn == {b.public: BOB_RELAYED} and len(peer.pings) == 1 and peer.punches_due

    a.from_coord(removal(b.public), 1.0)
    assert [machine.peer_keys() for machine in machines] == [set()] * len(machines)
    assert a.peers.by_key == {} and a.peers.by_overlay == {} and a.peers.by_index == {}
    assert a.node.turn.routes == {} and core.routes.turn == {} and a.node.turn.outbound(BOB_RELAYED) is None
    assert [abort.conn_id for abort in taken(a, TcpAbort)] == [a_conn]
    assert core.punching.get_timer() is None, "no punch or re-sample of the removed peer is left"
    assert core.get_timer() is None, "nor any deadline of its own (its punch due later, its ping, its handshake)"


def test_the_cores_machines_keep_their_per_peer_state_on_the_peer():
    a, b, _ = alice_and_bob(random.Random)
    a.send(ip_packet(a.address, b.address), 0.0)
    peer, handshakes = a.peers.by_key[b.public], a.node.core.handshakes
    assert peer.handshake is handshakes.attempts[b.public] and peer.probe_key is not None
    assert peer.traversal is not None and peer.probe_allowance is not None
    handshakes.attempts[bytes(32)] = peer.handshake
    assert bytes(32) not in handshakes.attempts, "a key with no peer has nowhere to keep state"
    del handshakes.attempts[b.public]
    assert peer.handshake is None and list(handshakes.attempts) == []


def test_a_peer_in_an_early_part_of_a_peer_map_gets_its_turn_route():
    a, b = (seeded(random.Random, seed, name, address, at) for seed, name, address, at in
            ((1, "alice", "100.64.0.1", ALICE_AT), (2, "bob", "100.64.0.2", BOB_AT)))
    carol = seeded(random.Random, 3, "carol", "100.64.0.3", Endpoint("203.0.113.3", 41641))
    with_turn_route(a, b, 0.0, m.PeerMap(peers=(turn_info(b),), part=0, last=False),
                    m.PeerMap(peers=(carol.info(),), part=1, last=True))
    assert set(a.peers.by_key) == {b.public, carol.public}


def test_a_relayed_peer_that_announces_ipv6_later_gets_a_punch_request_for_tcp():
    """A site without UDP announces its IPv6 endpoints after its first endpoint round, when the
    coord's punch is long over: the new TCP candidates ask for another, once, while relayed."""
    a, b = tcp_nodes()
    a.node.set_own_endpoints([Endpoint("2001:db8:1::11", 41641)], None)  # we have IPv6 too
    bare = m.PeerInfo(key=b.public, name=b.name, address=b.address, online=True)
    a.from_coord(m.PeerUpdate(peer=bare), 1.0)
    a.node.core.set_turn({b.public: Endpoint("203.0.113.30", 50002)}, 1.0)  # a relay path through TURN
    a.node.packet_from_tun(a.peers.by_key[b.public], ip_packet(a.address, b.address), 1.0)
    now = 1.0
    while (route := a.peers.by_key[b.public].route) is None and now < 10.0:
        now += 0.5
        a.tick(now)
    assert route is not None and route.path.kind is PathKind.RELAY
    a.coord_out.clear()
    with_ipv6 = m.PeerInfo(key=b.public, name=b.name, address=b.address, online=True,
                           ipv6_endpoints=(m.Endpoint("2001:db8:2::11", 41641),))
    a.from_coord(m.PeerUpdate(peer=with_ipv6), now)
    assert [msg for msg in a.coord_out if isinstance(msg, m.PunchRequest)] == [m.PunchRequest(peer_key=b.public)]
    a.coord_out.clear()
    a.from_coord(m.PeerUpdate(peer=with_ipv6), now)
    assert not [msg for msg in a.coord_out if isinstance(msg, m.PunchRequest)], "only new candidates ask"
    a.from_coord(m.Punch(peer_key=b.public, endpoints=()), now)
    assert [c.endpoint for c in taken(a, TcpConnect)] == [Endpoint("2001:db8:2::11", 41641)]
    a.node.set_own_endpoints([Endpoint("10.1.0.11", 41641)], None)  # no IPv6 of ours: no use trying theirs
    a.from_coord(m.Punch(peer_key=b.public, endpoints=()), now + 10.0)
    assert taken(a, TcpConnect) == []
